"""STREAM pretraining: MirrorGAN's image captioner on the data set's captions.

Teacher forcing (reference/attngan_family.md §5.3): the decoder reads [image
feature, w_1, ..., w_{L-1}] and is scored on w_1 .. w_L by the cross-entropy
averaged over the batch's real tokens. Recipe of the tutorial MirrorGAN points
to: Adam(lr 0.001) over the decoder and the encoder's `linear` and `bn` (the
ResNet-152 stays frozen), batch 128, 5 epochs. Captions are the DAMSM word ids
of the same data (no start/end tokens), so that MirrorGAN can score its images
against the captions it generated them from.

Evaluation: caption cross-entropy and token accuracy on the eval split
(teacher-forced, BN running statistics).

`load_frozen(workdir, vocab)` gives a finished run to MirrorGAN.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from t2ijax import checkpoint as ckpt_lib
from t2ijax import errors
from t2ijax.models import stream as stream_model
from t2ijax.trainers import method as method_lib
from t2ijax.trainers import state as state_lib

PRETRAIN_COMMAND = ("python -m t2ijax.main --config=configs/stream.py:{variant} "
                    "--workdir=STREAM_DIR")


def build_networks(config) -> tuple[stream_model.CaptionEncoder,
                                    stream_model.CaptionDecoder]:
  m = config.model
  encoder = stream_model.CaptionEncoder(
      embed_size=m.embed_size, backbone=m.backbone, tiny_width=m.tiny_width)
  decoder = stream_model.CaptionDecoder(
      n_words=m.n_words, embed_size=m.embed_size, hidden_size=m.hidden_size)
  return encoder, decoder


def backbone_frozen(config) -> bool:
  """The official ResNet-152 is frozen; the demo's tiny CNN trains."""
  return config.model.backbone == 'resnet152'


class StreamMethod(method_lib.Method):
  """Trains `encoder` (CAPTION_CNN heads) and `decoder` (CAPTION_RNN)."""

  def __init__(self, config, vocab, num_train_examples):
    super().__init__(config, vocab, num_train_examples)
    if config.model.backbone not in stream_model.BACKBONES:
      raise errors.ConfigError(
          f'model.backbone={config.model.backbone!r} is not one of '
          f'{stream_model.BACKBONES}')
    self.encoder, self.decoder = build_networks(config)
    self.size = max(config.data.image_sizes)
    o = config.optim
    adam = optax.adam(o.lr, o.b1, o.b2)
    self.txs = {
        'encoder': optax.multi_transform(
            {'train': adam, 'frozen': optax.set_to_zero()},
            self._encoder_param_labels),
        'decoder': adam,
    }

  def _encoder_param_labels(self, params):
    frozen = backbone_frozen(self.config)
    return {k: jax.tree.map(
        lambda _, k=k: 'frozen' if (frozen and k == 'backbone') else 'train', v)
            for k, v in params.items()}

  # ---- init ----
  def init_state(self, rng):
    k_enc, k_dec, k_state = jax.random.split(rng, 3)
    images = jnp.zeros((2, self.size, self.size, 3), jnp.float32)
    enc_vars = self.encoder.init(k_enc, images, train=False)
    features = jnp.zeros((2, self.config.model.embed_size))
    ids = jnp.ones((2, self.config.data.max_words), jnp.int32)
    dec_vars = self.decoder.init(k_dec, features, ids)
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(k_state),
        nets={
            'encoder': state_lib.new_net(
                enc_vars['params'], self.txs['encoder'],
                collections={'batch_stats': enc_vars['batch_stats']}),
            'decoder': state_lib.new_net(dec_vars['params'], self.txs['decoder']),
        })

  def load_pretrained(self, state):
    """The ImageNet ResNet-152 (torchvision resnet152-*.pth) for the backbone."""
    if not backbone_frozen(self.config):
      return state
    path = self.config.model.resnet_weights
    if not path:
      raise errors.ConfigError(
          'model.backbone=resnet152 is frozen, so STREAM needs ImageNet weights: '
          'set --config.model.resnet_weights=PATH/resnet152-*.pth (torchvision) '
          'or --config.model.backbone=tiny to train a small CNN instead')
    from t2ijax.convert import torch_inception
    try:
      variables = stream_model.resnet_variables_from_state_dict(
          torch_inception.load_state_dict(path))
    except KeyError as e:
      raise errors.CheckpointError(
          f'{path} is not a torchvision ResNet-152 state dict: {e}') from None
    enc = state.nets['encoder']
    put = lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding)
    try:
      backbone = jax.tree.map(put, variables['params'], enc.params['backbone'])
      stats = jax.tree.map(put, variables['batch_stats'],
                           enc.collections['batch_stats']['backbone'])
    except ValueError as e:
      raise errors.CheckpointError(
          f'{path} does not fit ResNet-152 ({e}); use torchvision resnet152 weights'
      ) from None
    logging.info('loaded ResNet-152 weights from %s', path)
    enc = enc.replace(
        params={**enc.params, 'backbone': backbone},
        collections={'batch_stats': {**enc.collections['batch_stats'],
                                     'backbone': stats}})
    return state.replace(nets={**state.nets, 'encoder': enc})

  # ---- losses ----
  def images(self, batch):
    return batch[f'image{self.size}'].astype(jnp.float32) / 127.5 - 1.0

  def _logits(self, enc_params, enc_collections, dec_params, images, captions,
              train):
    variables = {'params': enc_params, **enc_collections}
    if train:
      features, enc_collections = self.encoder.apply(
          variables, images, train=True, mutable=['batch_stats'])
    else:
      features = self.encoder.apply(variables, images, train=False)
    logits = self.decoder.apply({'params': dec_params}, features, captions)
    return logits, enc_collections

  def train_step(self, state, batch):
    enc, dec = state.nets['encoder'], state.nets['decoder']
    images = self.images(batch)

    def loss_fn(enc_params, dec_params):
      if backbone_frozen(self.config):
        # No backward pass through the frozen ResNet.
        enc_params = {**enc_params,
                      'backbone': jax.lax.stop_gradient(enc_params['backbone'])}
      logits, collections = self._logits(enc_params, enc.collections, dec_params,
                                         images, batch['caption'], train=True)
      out = stream_model.caption_loss(logits, batch['caption'], batch['caption_len'])
      return out['loss'], (out, collections)

    (_, (out, collections)), (g_enc, g_dec) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(enc.params, dec.params)
    enc = state_lib.apply_updates(enc, g_enc, self.txs['encoder'],
                                  collections=collections)
    dec = state_lib.apply_updates(dec, g_dec, self.txs['decoder'])
    metrics = dict(out, grad_norm=optax.tree.norm((g_enc, g_dec)))
    return state.replace(step=state.step + 1,
                         nets={'encoder': enc, 'decoder': dec}), metrics

  # ---- evaluation ----
  def eval_step(self, state, batch):
    enc, dec = state.nets['encoder'], state.nets['decoder']
    logits, _ = self._logits(enc.params, enc.collections, dec.params,
                             self.images(batch), batch['caption'], train=False)
    return stream_model.caption_loss(logits, batch['caption'], batch['caption_len'])

  def summarize_eval(self, outputs):
    return {k: float(np.mean([o[k] for o in outputs])) for k in outputs[0]}


@dataclasses.dataclass
class FrozenStream:
  config: ml_collections.ConfigDict   # the STREAM run's resolved config
  encoder: stream_model.CaptionEncoder
  decoder: stream_model.CaptionDecoder
  encoder_variables: dict             # host numpy trees
  decoder_variables: dict

  @property
  def image_size(self) -> int:
    return max(self.config.data.image_sizes)


def load_frozen(workdir: str, vocab=None, variant: str = 'VARIANT') -> FrozenStream:
  """The STREAM of `workdir`; `vocab` (the GAN data's) must be the one it used."""
  config = ckpt_lib.read_run_config(
      workdir, f'no STREAM run in {workdir} (config.json missing): pretrain one with '
      f'{PRETRAIN_COMMAND.format(variant=variant)} and pass '
      '--config.stream.workdir=STREAM_DIR')
  if config.get('method') != 'stream':
    raise errors.CheckpointError(
        f'{workdir} is a {config.get("method")!r} run, not a STREAM run '
        f'(configs/stream.py); point --config.stream.workdir at one')
  ckpt_lib.check_run_vocab(workdir, vocab, 'the STREAM', 'stream.workdir', config.data.source)
  method = StreamMethod(config, vocab=None, num_train_examples=config.train.batch_size)
  state, _ = ckpt_lib.restore_on_one_device(workdir, method.init_state)
  enc, dec = jax.device_get(state.nets['encoder']), jax.device_get(state.nets['decoder'])
  return FrozenStream(config=config, encoder=method.encoder, decoder=method.decoder,
                      encoder_variables=enc.variables(),
                      decoder_variables=dec.variables())
