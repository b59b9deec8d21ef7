"""MirrorGAN generator (G_NET with GLAM refinement stages), NHWC.

AttnGAN's generator (CA, init stage, image heads, ResBlocks, upBlocks; see
`t2ijax.models.attngan`) whose refinement stages attend globally and locally
(reference/attngan_family.md §5.2):

  1. GLAM (`t2ijax.nn.glam`): word context W (pixel-to-word attention) and
     sentence context S (attention over channels driven by the CA sample c);
  2. concat(h, W, S) (3 ngf) -> `conv`, a bias-free 1x1 conv to 2 ngf;
  3. r_num ResBlocks (2 ngf) -> upBlock to ngf (2x).

The discriminators are AttnGAN's (BatchNorm, no spectral norm): use
`attngan.Discriminator`.

Parameter paths of a GLAM stage (torch key -> flax path):
  h_net{i}.att.{conv_context,conv_sentence_vis,linear}
                                    h_net{i}/att/... (see `t2ijax.nn.glam`)
  h_net{i}.conv                     h_net{i}/conv (Conv2d 1x1, no bias)
  h_net{i}.residual.{k}.block.*     h_net{i}/residual_{k}/... (as AttnGAN)
  h_net{i}.upsample.{1,2}           h_net{i}/upsample/{conv,bn}
Everything else as `attngan.Generator`.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.models import attngan
from t2ijax.nn import glam
from t2ijax.nn import layers


class GlamStage(nn.Module):
  """MirrorGAN NEXT_STAGE_G: (B, H, W, ngf) -> (B, 2H, 2W, ngf).

  Attributes:
    ngf: channels of h.
    r_num: ResBlocks at 2 * ngf.
    official_mask_bug: see `t2ijax.nn.attention`.
  """
  ngf: int
  r_num: int
  official_mask_bug: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, c_code: jax.Array, words: jax.Array,
               word_mask: Optional[jax.Array], *,
               train: bool) -> tuple[jax.Array, dict]:
    """Refines h with the words and the sentence.

    Args:
      h: (B, H, W, ngf) image features.
      c_code: (B, ncf) the CA sample.
      words: (B, T, nef) word features.
      word_mask: (B, T) bool, True at real words; None: all real.
      train: BN batch statistics.

    Returns:
      (B, 2H, 2W, ngf) features and GLAM's outputs (attention maps).
    """
    att = glam.GlobalLocalAttention(self.official_mask_bug, name='att')(
        h, c_code, words, word_mask)
    x = jnp.concatenate([h, att['word_context'], att['sentence_context']],
                        axis=-1)
    x = layers.Conv2d(2 * self.ngf, 1, name='conv')(x)
    for k in range(self.r_num):
      x = layers.ResBlock(name=f'residual_{k}')(x, train=train)
    return layers.UpBlock(self.ngf, name='upsample')(x, train=train), att


class Generator(attngan.Generator):
  """MirrorGAN G_NET: images at 64, 128, 256 (or the first `num_stages`).

  Same call signature and outputs as `attngan.Generator`, plus
  'sentence_attention_maps': (B, S, S, ngf) channel weights per refinement
  stage. Defaults are the released CUB config (ngf 32, r_num 2).
  """

  def make_next_stage(self, name: str) -> nn.Module:
    return GlamStage(self.ngf, self.r_num, self.official_mask_bug, name=name)

  @nn.compact
  def __call__(self, z: jax.Array, sentence: jax.Array, words: jax.Array,
               word_mask: Optional[jax.Array] = None, *,
               ca_key: Optional[jax.Array] = None,
               ca_noise: Optional[jax.Array] = None,
               train: bool = False) -> dict:
    """As `attngan.Generator.__call__`; the stages also read the CA sample."""
    self._check_inputs(z, sentence, words, word_mask)
    c, mu, logvar = layers.ConditioningAugmentation(
        self.ncf, name='ca_net')(sentence, key=ca_key, noise=ca_noise)
    h = self.init_stage()(jnp.concatenate([c, z], axis=-1), train=train)
    images = [attngan.ImageHead(name='img_net1')(h)]
    word_maps, sentence_maps = [], []
    for stage in range(2, self.num_stages + 1):
      h, att = self.make_next_stage(f'h_net{stage}')(
          h, c, words, word_mask, train=train)
      images.append(attngan.ImageHead(name=f'img_net{stage}')(h))
      word_maps.append(att['word_attention'])
      sentence_maps.append(att['sentence_attention'])
    return {'images': images, 'attention_maps': word_maps,
            'sentence_attention_maps': sentence_maps, 'mu': mu,
            'logvar': logvar}
