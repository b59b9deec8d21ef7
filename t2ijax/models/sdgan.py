"""SD-GAN generator and discriminators (NHWC), built on AttnGAN's.

No official code exists (reference/attngan_family.md §6); this is our reading
of the paper on top of `t2ijax.models.attngan`:

Generator: AttnGAN's G_NET (CA, init stage, attention stages, image heads)
with every BatchNorm that follows a convolution replaced by SCBN
(`t2ijax.nn.conditional_norm.SemanticConditionedBatchNorm`):
  - init stage (h_net1): its four upBlocks use sentence-level SCBN, fed by
    the raw sentence embedding (this stage sees no words in AttnGAN);
    the BN1d after the first fc stays plain.
  - refinement stages (h_net2, h_net3): both BNs of every ResBlock and the
    upBlock's BN use word-level SCBN (`refine_level='word'`), each with its own
    word attention read at its input; `refine_level='sentence'` uses the
    sentence there too. AttnGAN's stage attention (`att`) and the concat
    (h, context) are kept.
Discriminators: AttnGAN's D_NET64/128/256 plus a Siamese feature head
`SIAMESE/fc` on the flattened (4, 4, 8 ndf) trunk features, L2-normalised,
so the contrastive loss's margin (1.0) and positive floor (0.1) are distances
on the unit sphere (d in [0, 2]).

Parameter paths: as `t2ijax.models.attngan`, with each replaced `bn` now an
SCBN module: `<block>/bn/cbn/{scale,bias}` (the former BN's weight and bias),
`<block>/bn/cbn/fc_{gamma,beta}/linear1/{kernel,bias}` (f_gamma, f_beta),
word level also `<block>/bn/att/conv_context/kernel`; batch_stats under
`<block>/bn/cbn/bn`. ResBlocks: `residual_{k}/{conv1,bn1,conv2,bn2}`.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.models import attngan
from t2ijax.nn import attention
from t2ijax.nn import conditional_norm
from t2ijax.nn import layers

SCBN = conditional_norm.SemanticConditionedBatchNorm


class ScbnUpBlock(nn.Module):
  """upBlock with SCBN: nearest 2x -> conv3x3 (2 * features) -> SCBN -> GLU.

  Attributes:
    features: output channels.
    level: 'sentence' or 'word' SCBN.
  """
  features: int
  level: str = 'sentence'

  @nn.compact
  def __call__(self, x: jax.Array, condition: jax.Array,
               word_mask: Optional[jax.Array] = None, *,
               train: bool) -> jax.Array:
    x = layers.upsample_nearest_2x(x)
    x = layers.conv3x3(2 * self.features, name='conv')(x)
    x = SCBN(self.level, name='bn')(x, condition, word_mask, train=train)
    return layers.glu(x)


class ScbnResBlock(nn.Module):
  """x + SCBN(conv3x3(GLU(SCBN(conv3x3(x, 2C))), C)).

  Attributes:
    level: 'sentence' or 'word' SCBN.
  """
  level: str = 'word'

  @nn.compact
  def __call__(self, x: jax.Array, condition: jax.Array,
               word_mask: Optional[jax.Array] = None, *,
               train: bool) -> jax.Array:
    channels = x.shape[-1]
    y = layers.conv3x3(2 * channels, name='conv1')(x)
    y = layers.glu(SCBN(self.level, name='bn1')(y, condition, word_mask,
                                                train=train))
    y = layers.conv3x3(channels, name='conv2')(y)
    y = SCBN(self.level, name='bn2')(y, condition, word_mask, train=train)
    return x + y


class InitStage(nn.Module):
  """AttnGAN's INIT_STAGE_G with sentence-level SCBN in its four upBlocks.

  Attributes:
    channels: width at 4x4 (16 * ngf).
  """
  channels: int

  @nn.compact
  def __call__(self, code: jax.Array, sentence: jax.Array, *,
               train: bool) -> jax.Array:
    side = attngan.BASE_SIDE
    x = nn.Dense(2 * self.channels * side * side, use_bias=False,
                 kernel_init=layers.orthogonal_init(), name='fc')(code)
    x = layers.glu(layers.batch_norm(train, name='fc_bn')(x))
    # Channel-major view, as AttnGAN's (see t2ijax.models.attngan).
    x = x.reshape(-1, self.channels, side, side).transpose(0, 2, 3, 1)
    for i in range(1, 5):
      x = ScbnUpBlock(self.channels // 2**i, 'sentence', name=f'upsample{i}')(
          x, sentence, train=train)
    return x


class AttentionStage(nn.Module):
  """AttnGAN's NEXT_STAGE_G with SCBN in its ResBlocks and upBlock.

  Attributes:
    ngf: channels of h.
    r_num: ResBlocks at 2 * ngf channels.
    level: SCBN level of this stage ('word' or 'sentence').
    official_mask_bug: of the stage's own word attention (`att`).
  """
  ngf: int
  r_num: int
  level: str = 'word'
  official_mask_bug: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, sentence: jax.Array, words: jax.Array,
               word_mask: Optional[jax.Array], *,
               train: bool) -> tuple[jax.Array, jax.Array]:
    context, attn = attention.WordAttention(
        self.official_mask_bug, name='att')(h, words, word_mask)
    x = jnp.concatenate([h, context], axis=-1)
    condition = words if self.level == 'word' else sentence
    mask = word_mask if self.level == 'word' else None
    for k in range(self.r_num):
      x = ScbnResBlock(self.level, name=f'residual_{k}')(
          x, condition, mask, train=train)
    x = ScbnUpBlock(self.ngf, self.level, name='upsample')(
        x, condition, mask, train=train)
    return x, attn


class Generator(attngan.Generator):
  """SD-GAN's generator: AttnGAN's G_NET with SCBN (see module docstring).

  Same call signature and outputs as `attngan.Generator`.

  Attributes (beyond AttnGAN's):
    refine_level: SCBN level of the refinement stages, 'word' or 'sentence'.
  """
  refine_level: str = 'word'

  @nn.compact
  def __call__(self, z: jax.Array, sentence: jax.Array, words: jax.Array,
               word_mask: Optional[jax.Array] = None, *,
               ca_key: Optional[jax.Array] = None,
               ca_noise: Optional[jax.Array] = None,
               train: bool = False) -> dict:
    """As `attngan.Generator.__call__`: images per stage, attention maps, CA."""
    self._check_inputs(z, sentence, words, word_mask)
    if self.refine_level not in conditional_norm.SCBN_LEVELS:
      raise ValueError(f'refine_level must be one of '
                       f'{conditional_norm.SCBN_LEVELS}; got {self.refine_level!r}.')
    c, mu, logvar = layers.ConditioningAugmentation(
        self.ncf, name='ca_net')(sentence, key=ca_key, noise=ca_noise)
    h = InitStage(attngan.INIT_WIDTH_FACTOR * self.ngf, name='h_net1')(
        jnp.concatenate([c, z], axis=-1), sentence, train=train)
    images = [attngan.ImageHead(name='img_net1')(h)]
    attention_maps = []
    for stage in range(2, self.num_stages + 1):
      h, attn = AttentionStage(self.ngf, self.r_num, self.refine_level,
                               self.official_mask_bug, name=f'h_net{stage}')(
                                   h, sentence, words, word_mask, train=train)
      images.append(attngan.ImageHead(name=f'img_net{stage}')(h))
      attention_maps.append(attn)
    return {'images': images, 'attention_maps': attention_maps,
            'mu': mu, 'logvar': logvar}


class SiameseHead(nn.Module):
  """D trunk features (B, 4, 4, 8 ndf) -> unit vectors (B, features).

  Attributes:
    features: embedding size.
  """
  features: int = 256

  @nn.compact
  def __call__(self, trunk: jax.Array) -> jax.Array:
    x = nn.Dense(self.features, kernel_init=layers.orthogonal_init(),
                 bias_init=nn.initializers.zeros, name='fc')(
                     trunk.reshape(trunk.shape[0], -1))
    # Unit length: the contrastive margin and floor then have a fixed scale.
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)
    return x / norm


class Discriminator(attngan.Discriminator):
  """AttnGAN's D_NET plus the Siamese head (`SIAMESE`).

  Attributes (beyond AttnGAN's):
    siamese_dim: size of the Siamese embedding.
  """
  siamese_dim: int = 256

  def setup(self):
    super().setup()
    self.SIAMESE = SiameseHead(self.siamese_dim)  # pylint: disable=invalid-name

  def siamese(self, features: jax.Array) -> jax.Array:
    """(B, 4, 4, 8ndf) trunk features -> (B, siamese_dim) unit vectors."""
    return self.SIAMESE(features)

  def __call__(self, images: jax.Array, sentence: Optional[jax.Array] = None,
               *, train: bool = False) -> dict:
    """As `attngan.Discriminator.__call__`, plus 'siamese': (B, siamese_dim)."""
    out = super().__call__(images, sentence, train=train)
    out['siamese'] = self.siamese(out['features'])
    return out
