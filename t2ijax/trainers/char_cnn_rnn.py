"""Trains the char-CNN-RNN text encoder with the symmetric joint embedding loss.

As cvpr2016 `train_sje_hybrid.lua` (reference/stackgan_dfgan_family.md §2.3):
text embedding (char-CNN-RNN, 1024-d) and image embedding in one space, scored
by inner products, symmetric SJE hinge loss (t2ijax/losses/joint_embedding.py);
RMSprop (lr 0.0007, alpha 0.99, eps 1e-8 outside the square root, as Torch's
optim.rmsprop), lr x0.98 after every epoch, parameters U(-0.08, 0.08).

The official image side was fixed precomputed GoogLeNet features (image_noop).
Here it is the DAMSM image encoder with its global code of emb_dim features:
a frozen Inception-v3 (ImageNet weights, model.inception_weights) and a
trained projection for CUB, or the small trainable CNN for the shapes demo,
so any captioned source trains the pair end to end, the way DAMSM
pretraining does (and its Inception loading is reused).

Captions come as the pipeline's word ids and are spelled into characters on
the device (t2ijax/encoders/char_cnn_rnn.py CharTable). The trained run's
'text' net is what text.kind='char_cnn_rnn' loads (load_text_encoder).
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2ijax import checkpoint as ckpt_lib
from t2ijax import errors
from t2ijax.encoders import char_cnn_rnn
from t2ijax.encoders import damsm as damsm_enc
from t2ijax.losses import joint_embedding
from t2ijax.trainers import damsm as damsm_trainer
from t2ijax.trainers import state as state_lib


def build_text_encoder(model_config) -> char_cnn_rnn.CharCnnRnn:
  m = model_config
  return char_cnn_rnn.CharCnnRnn(emb_dim=m.emb_dim, cnn_dim=m.cnn_dim, rnn_type=m.rnn_type,
                                 average=m.average, dropout_rate=m.dropout)


def learning_rate(step: jax.Array, steps_per_epoch: int, optim) -> jax.Array:
  """lr0 * decay^(finished epochs): Torch's per-epoch decay from epoch 1 on."""
  epoch = (step // steps_per_epoch).astype(jnp.float32)
  return optim.lr * jnp.power(optim.lr_decay_per_epoch, epoch)


class CharCnnRnnMethod(damsm_trainer.DamsmMethod):
  """Nets 'text' (char-CNN-RNN) and 'image' (DAMSM image encoder, global code)."""

  def __init__(self, config, vocab, num_train_examples):
    # Not DamsmMethod.__init__: other encoders and optimizer; its Inception
    # loading (load_pretrained) and parameter labels are shared.
    self.config, self.vocab, self.num_train_examples = config, vocab, num_train_examples
    m, o = config.model, config.optim
    if m.rnn_type not in ('gru', 'rnn'):
      raise errors.ConfigError(f"model.rnn_type={m.rnn_type!r} is not 'gru' or 'rnn'")
    self.text_encoder = build_text_encoder(m)
    self.image_encoder = damsm_enc.ImageEncoder(
        nef=m.emb_dim, backbone=m.backbone, backbone_trainable=m.backbone_trainable,
        backbone_bn_train=m.backbone_bn_train, tiny_width=m.tiny_width)
    self.chars = char_cnn_rnn.CharTable.from_vocab(vocab) if vocab is not None else None
    self.size = max(config.data.image_sizes)
    self.steps_per_epoch = max(num_train_examples // config.train.batch_size, 1)
    rms = optax.scale_by_rms(decay=o.rms_decay, eps=o.eps, eps_in_sqrt=False)
    self.txs = {'text': rms,
                'image': optax.multi_transform(
                    {'train': optax.scale_by_rms(decay=o.rms_decay, eps=o.eps,
                                                 eps_in_sqrt=False),
                     'frozen': optax.set_to_zero()}, self._image_param_labels)}

  def init_state(self, rng):
    k_text, k_image, k_state = jax.random.split(rng, 3)
    chars = jnp.zeros((2, char_cnn_rnn.DOC_LENGTH), jnp.int32)
    text_vars = self.text_encoder.init(k_text, chars)
    images = jnp.zeros((2, self.size, self.size, 3), jnp.float32)
    image_vars = self.image_encoder.init(k_image, images, train=False)
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(k_state),
        nets={'text': state_lib.new_net(text_vars['params'], self.txs['text']),
              'image': state_lib.new_net(image_vars['params'], self.txs['image'],
                                         collections={'batch_stats': image_vars['batch_stats']})})

  def _embed(self, text_params, image_params, collections, batch, key, train):
    chars = self.chars.spell(batch['caption'], batch['caption_len'])
    text = self.text_encoder.apply({'params': text_params}, chars, deterministic=not train,
                                   rngs={'dropout': key} if train else None)
    images = batch[f'image{self.size}'].astype(jnp.float32) / 127.5 - 1.0
    variables = {'params': image_params, **collections}
    if train:
      image, collections = self.image_encoder.apply(variables, images, train=True,
                                                    mutable=['batch_stats'])
    else:
      image = self.image_encoder.apply(variables, images, train=False)
    return text, image['global'], collections

  def _loss(self, text, image, batch):
    return joint_embedding.joint_embedding_loss(
        text, image, batch['class_id'], symmetric=self.config.loss.symmetric)

  def train_step(self, state, batch):
    key = state.step_key()
    text_net, image_net = state.nets['text'], state.nets['image']

    def loss_fn(text_params, image_params):
      text, image, stats = self._embed(text_params, image_params, image_net.collections,
                                       batch, key, train=True)
      out = self._loss(text, image, batch)
      return out['loss'], (out, stats)

    (_, (out, stats)), (g_text, g_image) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(text_net.params, image_net.params)
    lr = learning_rate(state.step, self.steps_per_epoch, self.config.optim)
    text_net = state_lib.apply_updates(text_net, g_text, self.txs['text'], learning_rate=lr)
    image_net = state_lib.apply_updates(image_net, g_image, self.txs['image'],
                                        collections=stats, learning_rate=lr)
    metrics = dict(out, lr=lr, text_grad_norm=optax.tree.norm(g_text))
    return state.replace(step=state.step + 1, nets={'text': text_net, 'image': image_net}), \
        metrics

  def eval_step(self, state, batch):
    text_net, image_net = state.nets['text'], state.nets['image']
    text, image, _ = self._embed(text_net.params, image_net.params, image_net.collections,
                                 batch, None, train=False)
    return self._loss(text, image, batch)

  def summarize_eval(self, outputs):
    result = {k: float(np.mean([o[k] for o in outputs])) for k in outputs[0]}
    result['chance_top1'] = 1.0 / self.config.eval.batch_size
    return result

  def sample_grid(self, state, batch):
    return None


def load_text_encoder(workdir: str) -> tuple[char_cnn_rnn.CharCnnRnn, dict]:
  """(module, params) of the text encoder of a char_cnn_rnn run in `workdir`."""
  config = ckpt_lib.read_run_config(
      workdir, f'no char-CNN-RNN run in {workdir} (config.json missing): train one with '
      'python -m t2ijax.main --config=configs/char_cnn_rnn.py:VARIANT --workdir=DIR and set '
      '--config.text.char_cnn_rnn_workdir=DIR')
  if config.get('method') != 'char_cnn_rnn':
    raise errors.CheckpointError(
        f'{workdir} is a {config.get("method")!r} run, not a char_cnn_rnn one; point '
        'text.char_cnn_rnn_workdir at a configs/char_cnn_rnn.py run')
  module = build_text_encoder(config.model)
  method = CharCnnRnnMethod(config, vocab=None, num_train_examples=config.train.batch_size)
  state, _ = ckpt_lib.restore_on_one_device(
      workdir, method.init_state,
      missing_message=f'the char-CNN-RNN run in {workdir} has no checkpoint yet; train it first')
  return module, jax.device_get(state.nets['text'].params)
