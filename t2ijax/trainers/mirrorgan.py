"""MirrorGAN: text-to-image-to-text, the shared GAN trainer plus re-description.

reference/attngan_family.md §5: STEM = the frozen DAMSM text encoder (words
and sentence), GLAM = the generator's global-local attention
(`t2ijax.models.mirrorgan`), STREAM = a captioner pretrained on the data set's
captions (configs/stream.py) and then frozen. AttnGAN's discriminators and D
objective are kept; G's loss is

  sum_stages [BCE(uncond, 1) + BCE(cond, 1)]
  + redescription_weight (10) * CE(STREAM(final image), caption)
  + KL (weight 1),

with no DAMSM term officially (loss.damsm_lambda = 0; a positive value adds
AttnGAN's). The CE is teacher-forced and averaged over the batch's real
tokens; STREAM runs in inference mode (BN running statistics) and only G
receives its gradient.

The demo variant pretrains what it lacks first: a DAMSM into <workdir>/damsm
and a STREAM into <workdir>/stream.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax import errors
from t2ijax.models import mirrorgan
from t2ijax.models import stream as stream_model
from t2ijax.trainers import attngan as attngan_trainer
from t2ijax.trainers import gan
from t2ijax.trainers import state as state_lib
from t2ijax.trainers import stream as stream_trainer


def _variant_hint(config) -> str:
  """The configs/stream.py variant that fits this run's data source."""
  return config.data.source if config.data.source in ('cub', 'coco') else 'demo'


class MirrorGan(attngan_trainer.AttnGan):
  """AttnGAN's trainer with GLAM stages and STREAM's re-description loss."""
  # bfloat16 as AttnGAN (compute_dtypes inherited): G with its GLAM stages and
  # the Ds compute in it; the frozen STREAM re-describes the float32 image in
  # float32, as the frozen DAMSM encodes in float32.
  generator_module = mirrorgan.Generator

  def __init__(self, config, vocab, num_train_examples):
    self.stream = stream_trainer.load_frozen(config.stream.workdir, vocab,
                                             _variant_hint(config))
    super().__init__(config, vocab, num_train_examples)

  @classmethod
  def prepare_run(cls, config, workdir: str) -> None:
    """Finds (or, in the demo, first trains) the DAMSM and the STREAM."""
    super().prepare_run(config, workdir)
    if config.stream.workdir:
      if not os.path.exists(os.path.join(config.stream.workdir, 'config.json')):
        raise errors.ConfigError(
            f'config.stream.workdir={config.stream.workdir} holds no STREAM run: '
            'pretrain one with '
            + stream_trainer.PRETRAIN_COMMAND.format(variant=_variant_hint(config))
            + f' --workdir={config.stream.workdir}')
      return
    if not config.stream.pretrain:
      raise errors.ConfigError(
          'mirrorgan needs a pretrained STREAM captioner: train one with '
          + stream_trainer.PRETRAIN_COMMAND.format(variant=_variant_hint(config))
          + ', then pass --config.stream.workdir=STREAM_DIR')
    config.stream.workdir = os.path.join(workdir, 'stream')
    gan.pretrain_if_missing(config, config.stream.pretrain, config.stream.workdir, 'a STREAM')

  # ---- the frozen STREAM travels in the state, as the DAMSM does ----
  def init_state(self, rng):
    state = super().init_state(rng)
    enc = jax.tree.map(jnp.asarray, self.stream.encoder_variables)
    dec = jax.tree.map(jnp.asarray, self.stream.decoder_variables)
    nets = dict(state.nets)
    nets['stream_encoder'] = state_lib.new_net(
        enc['params'], None,
        collections={k: v for k, v in enc.items() if k != 'params'})
    nets['stream_decoder'] = state_lib.new_net(dec['params'], None)
    return state.replace(nets=nets)

  def redescription_loss(self, state, image, captions, lengths):
    """STREAM's teacher-forced caption CE of `image` (B, S, S, 3) in [-1, 1]."""
    s = self.stream
    if s.config.model.backbone != 'resnet152' and image.shape[1] != s.image_size:
      # The tiny CNN was trained at its own size (ResNet-152 resizes itself).
      image = jax.image.resize(
          image, (image.shape[0], s.image_size, s.image_size, 3), 'linear')
    features = s.encoder.apply(state.nets['stream_encoder'].variables(), image,
                               train=False)
    logits = s.decoder.apply(state.nets['stream_decoder'].variables(), features,
                             captions)
    return stream_model.caption_loss(logits, captions, lengths)

  def generator_extra_losses(self, state, fakes, words, sentence, lengths, batch):
    out = {}
    if self.config.loss.damsm_lambda > 0:
      out.update(super().generator_extra_losses(state, fakes, words, sentence,
                                                lengths, batch))
    caption = self.redescription_loss(state, fakes[-1], batch['caption'], lengths)
    out['redescription'] = self.config.loss.redescription_weight * caption['loss']
    return out

  # ---- evaluation: the shared metrics plus how well STREAM re-describes ----
  def eval_step(self, state, batch):
    out = super().eval_step(state, batch)
    images = out['images'].astype(jnp.float32) / 127.5 - 1.0
    caption = self.redescription_loss(state, images, batch['caption'],
                                      batch['caption_len'])
    out['stream_caption_loss'] = caption['loss']
    out['stream_token_accuracy'] = caption['token_accuracy']
    return out

  def summarize_eval(self, outputs):
    result = super().summarize_eval(outputs)
    for key in ('stream_caption_loss', 'stream_token_accuracy'):
      result[key] = float(np.mean([o[key] for o in outputs]))
    return result
