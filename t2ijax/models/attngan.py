"""AttnGAN generator (G_NET) and discriminators (D_NET64/128/256), NHWC.

Generator: CA on the sentence -> concat(c, z) -> init stage (4x4 -> 64x64 at
ngf channels, built with 16 * ngf) -> image; then each next stage attends
from every pixel over the words, concatenates (h, context), runs r_num
ResBlocks and an upBlock (2x) -> image. Images are in [-1, 1].

Discriminator: a strided-conv trunk to (4, 4, 8 * ndf) for 64/128/256 inputs
and two heads on it: unconditional, and conditioned on the raw sentence
embedding tiled to 4x4. Heads return logits (the official Sigmoid is left to
the loss).

Parameter paths (torch key -> flax path; `[BN]` = weight/bias -> params
scale/bias, running_mean/var -> batch_stats mean/var; conv weight (O, I, kh,
kw) -> kernel (kh, kw, I, O); Linear (O, I) -> Dense kernel (I, O)):
  ca_net.fc                       ca_net/fc
  h_net1.fc.0 / .fc.1 [BN]        h_net1/fc, h_net1/fc_bn
  h_net1.upsample{i}.1 / .2       h_net1/upsample{i}/conv, /bn
  img_net{i}.img.0                img_net{i}/img
  h_net{i}.att.conv_context       h_net{i}/att/conv_context (Dense:
                                  weight[:, :, 0, 0].T)
  h_net{i}.residual.{k}.block.{0,1,3,4}
                                  h_net{i}/residual_{k}/{conv1,bn1,conv2,bn2}
  h_net{i}.upsample.1 / .2        h_net{i}/upsample/conv, /bn
  D img_code_s16.{0,2,5,8}        img_code_s16/conv_{0,1,2,3}
  D img_code_s16.{3,6,9} [BN]     img_code_s16/bn_{1,2,3}
  D img_code_s32 / _s32_1 / _s64 / _s64_1 / _s64_2 .0 / .1
                                  same name /conv, /bn
  D UNCOND_DNET.outlogits.0       UNCOND_DNET/outlogits
  D COND_DNET.jointConv.0 / .1    COND_DNET/jointConv/conv, /bn
  D COND_DNET.outlogits.0         COND_DNET/outlogits
The fc output of h_net1 is viewed channel-major (B, C, 4, 4) as officially,
so its kernel and BN map without permutation.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.nn import attention
from t2ijax.nn import layers

# The init stage is built with this many times ngf channels at 4x4.
INIT_WIDTH_FACTOR = 16
# Side of the first feature map and of the discriminator's final map.
BASE_SIDE = 4
# Generator.base_size -> upBlocks of the init stage.
BASE_SIZES = {32: 3, 64: 4}
# 64, 128, 256 officially; 32 is this project's addition for small demos
# (a generator whose first stage is 32 pixels; `Generator.base_size`).
DISCRIMINATOR_SIZES = (32, 64, 128, 256)


class InitStage(nn.Module):
  """INIT_STAGE_G: concat(c, z) -> (B, 64, 64, channels // 16) (official).

  fc (no bias) to 2 * 16 * channels, BN1d, GLU, viewed as (channels, 4, 4),
  then `num_upsamples` upBlocks halving the channels.

  Attributes:
    channels: width at 4x4 (16 * ngf officially).
    num_upsamples: upBlocks, each halving the width (4 officially: 64
      pixels at channels // 16).
  """
  channels: int
  num_upsamples: int = 4

  @nn.compact
  def __call__(self, code: jax.Array, *, train: bool) -> jax.Array:
    side = BASE_SIDE
    x = nn.Dense(2 * self.channels * side * side, use_bias=False,
                 kernel_init=layers.orthogonal_init(), name='fc')(code)
    x = layers.glu(layers.batch_norm(train, name='fc_bn')(x))
    # torch views the vector channel-major; keep that order, then go NHWC.
    x = x.reshape(-1, self.channels, side, side).transpose(0, 2, 3, 1)
    for i in range(1, self.num_upsamples + 1):
      x = layers.UpBlock(self.channels // 2**i, name=f'upsample{i}')(
          x, train=train)
    return x


class ImageHead(nn.Module):
  """GET_IMAGE_G: conv3x3 (no bias) to RGB, then tanh."""

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    return jnp.tanh(layers.conv3x3(3, name='img')(h))


class AttentionStage(nn.Module):
  """NEXT_STAGE_G: word attention, concat(h, context), ResBlocks, upBlock.

  Input (B, H, W, ngf) -> (B, 2H, 2W, ngf). The official stage also takes the
  CA code but does not use it.

  Attributes:
    ngf: channels of h.
    r_num: number of ResBlocks at 2 * ngf channels.
    official_mask_bug: see `t2ijax.nn.attention`.
  """
  ngf: int
  r_num: int
  official_mask_bug: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, words: jax.Array,
               word_mask: Optional[jax.Array], *,
               train: bool) -> tuple[jax.Array, jax.Array]:
    context, attn = attention.WordAttention(
        self.official_mask_bug, name='att')(h, words, word_mask)
    x = jnp.concatenate([h, context], axis=-1)
    for k in range(self.r_num):
      x = layers.ResBlock(name=f'residual_{k}')(x, train=train)
    return layers.UpBlock(self.ngf, name='upsample')(x, train=train), attn


class Generator(nn.Module):
  """AttnGAN G_NET: images at 64, 128, 256 (or the first `num_stages`).

  Subclasses change the refinement stages by overriding `make_next_stage`
  (DM-GAN's memory stage).

  Attributes:
    ngf: generator width (GF_DIM; CUB 32, COCO 48).
    r_num: ResBlocks per refinement stage (CUB 2, COCO 3).
    z_dim: noise size (100).
    ncf: CA condition size (CONDITION_DIM, 100).
    nef: text feature size (EMBEDDING_DIM, 256).
    num_stages: output stages, 1 (64 only) to 3 (64, 128, 256).
    official_mask_bug: reproduce the official attention-mask bug.
    base_size: side of the first stage's images, 64 officially; 32 halves
      every stage (32, 64, 128) for small demos: the init stage then starts
      at 8 ngf (not 16 ngf) and has three upBlocks, so it still ends at ngf
      and every later layer has its official shape.
  """
  ngf: int = 32
  r_num: int = 2
  z_dim: int = 100
  ncf: int = 100
  nef: int = 256
  num_stages: int = 3
  official_mask_bug: bool = False
  base_size: int = 64

  def init_stage(self) -> 'InitStage':
    """h_net1, built for `base_size` (call within the compact __call__)."""
    if self.base_size not in BASE_SIZES:
      raise ValueError(f'base_size must be one of {tuple(BASE_SIZES)}; got {self.base_size}.')
    upsamples = BASE_SIZES[self.base_size]
    channels = INIT_WIDTH_FACTOR * self.ngf // 2**(4 - upsamples)
    return InitStage(channels, upsamples, name='h_net1')

  def make_next_stage(self, name: str) -> nn.Module:
    """The refinement stage module (called within the compact __call__)."""
    return AttentionStage(self.ngf, self.r_num, self.official_mask_bug,
                          name=name)

  @nn.compact
  def __call__(self, z: jax.Array, sentence: jax.Array, words: jax.Array,
               word_mask: Optional[jax.Array] = None, *,
               ca_key: Optional[jax.Array] = None,
               ca_noise: Optional[jax.Array] = None,
               train: bool = False) -> dict:
    """Generates images from noise and text features.

    Args:
      z: (B, z_dim) noise, N(0, 1) officially.
      sentence: (B, nef) sentence embedding.
      words: (B, T, nef) word features.
      word_mask: (B, T) bool, True at real words; None: all real.
      ca_key: PRNG key of the CA noise; or pass ca_noise (B, ncf).
      ca_noise: the CA noise itself.
      train: BN batch statistics (apply with mutable=['batch_stats']).

    Returns:
      {'images': list of (B, S, S, 3) in [-1, 1], S = 64, 128, 256,
       'attention_maps': list of (B, S, S, T) word weights per pixel, one per
         refinement stage, at its input size S = 64, 128,
       'mu', 'logvar': (B, ncf) the CA Gaussian}.
    """
    self._check_inputs(z, sentence, words, word_mask)
    c, mu, logvar = layers.ConditioningAugmentation(
        self.ncf, name='ca_net')(sentence, key=ca_key, noise=ca_noise)
    h = self.init_stage()(jnp.concatenate([c, z], axis=-1), train=train)
    images = [ImageHead(name='img_net1')(h)]
    attention_maps = []
    for stage in range(2, self.num_stages + 1):
      h, attn = self.make_next_stage(f'h_net{stage}')(
          h, words, word_mask, train=train)
      images.append(ImageHead(name=f'img_net{stage}')(h))
      attention_maps.append(attn)
    return {'images': images, 'attention_maps': attention_maps,
            'mu': mu, 'logvar': logvar}

  def _check_inputs(self, z, sentence, words, word_mask):
    if self.num_stages < 1:
      raise ValueError(f'num_stages must be >= 1; got {self.num_stages}.')
    batch = z.shape[0]
    expected = {'z': (batch, self.z_dim), 'sentence': (batch, self.nef)}
    for name, array in (('z', z), ('sentence', sentence)):
      if array.shape != expected[name]:
        raise ValueError(f'{name} must be {expected[name]} (z_dim '
                         f'{self.z_dim}, nef {self.nef}); got {array.shape}.')
    if words.ndim != 3 or words.shape[0] != batch or words.shape[2] != self.nef:
      raise ValueError(f'words must be (B={batch}, T, nef={self.nef}); got '
                       f'{words.shape}.')
    if word_mask is not None and word_mask.shape != words.shape[:2]:
      raise ValueError(f'word_mask must be {words.shape[:2]}; got '
                       f'{word_mask.shape}.')


class DownsampleBy16(nn.Module):
  """img_code_s16: four 4x4/2 convs, ndf -> 8 * ndf, S -> S / 16.

  conv_0 is followed by LeakyReLU only; conv_1..3 by BN (bn_1..3) and
  LeakyReLU. The spectral-norm variant (DM-GAN) has conv biases and no BN.

  Attributes:
    ndf: channels after the first conv.
    use_spectral_norm: DM-GAN variant.
    num_layers: 4 officially; 3 for 32-pixel images (S -> S / 8, starting
      at 2 ndf so that it still ends at 8 ndf).
  """
  ndf: int
  use_spectral_norm: bool = False
  num_layers: int = 4

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    sn = self.use_spectral_norm
    x = images
    for i in range(self.num_layers):
      x = layers.conv2d(self.ndf * 2**(i + 4 - self.num_layers), 4, strides=2, padding=1,
                        use_bias=sn, use_spectral_norm=sn, name=f'conv_{i}')(x)
      if i > 0 and not sn:
        x = layers.batch_norm(train, name=f'bn_{i}')(x)
      x = nn.leaky_relu(x, layers.LEAKY_SLOPE)
    return x


class LogitsHead(nn.Module):
  """D_GET_LOGITS: [jointConv on concat(h, tiled sentence)] -> outlogits.

  outlogits is a 4x4/4 conv with bias (8ndf -> 1) on the 4x4 map, i.e. one
  logit per image; always a plain conv.

  Attributes:
    ndf: discriminator width; features have 8 * ndf channels.
    use_spectral_norm: jointConv spectral-normalised with bias, no BN.
    conditional: COND_DNET (True) or UNCOND_DNET (False).
  """
  ndf: int
  use_spectral_norm: bool = False
  conditional: bool = False

  @nn.compact
  def __call__(self, features: jax.Array, sentence: Optional[jax.Array] = None,
               *, train: bool = False) -> jax.Array:
    x = features
    if self.conditional:
      tiled = jnp.broadcast_to(
          sentence[:, None, None, :],
          (*features.shape[:3], sentence.shape[-1]))
      x = jnp.concatenate([features, tiled], axis=-1)
      x = layers.ConvNormLeakyReLU(
          8 * self.ndf, 3, padding=1,
          use_batch_norm=not self.use_spectral_norm,
          use_spectral_norm=self.use_spectral_norm, name='jointConv')(
              x, train=train)
    logits = layers.Conv2d(1, BASE_SIDE, strides=BASE_SIDE, use_bias=True,
                           name='outlogits')(x)
    return logits.reshape(-1)


def trunk_block(features: int, kernel_size: int,
                use_spectral_norm: bool = False) -> nn.Module:
  """conv (4x4 stride 2, or 3x3) -> BN (or spectral norm) -> LeakyReLU(0.2)."""
  return layers.ConvNormLeakyReLU(
      features, kernel_size, strides=2 if kernel_size == 4 else 1, padding=1,
      use_batch_norm=not use_spectral_norm, use_spectral_norm=use_spectral_norm)


def add_image_trunk(module: nn.Module, ndf: int, use_spectral_norm: bool = False) -> None:
  """Creates D's image trunk as submodules of `module`; call it from its setup.

  StackGAN++'s and the AttnGAN family's discriminators share it, under the
  official names: img_code_s16 (down 16x), then for module.image_size 128
  img_code_s32, img_code_s32_1 and for 256 img_code_s32, img_code_s64,
  img_code_s64_1, img_code_s64_2, all ending at (4, 4, 8 ndf).
  """
  sn = use_spectral_norm
  module.img_code_s16 = DownsampleBy16(ndf, sn, num_layers=3 if module.image_size == 32 else 4)
  if module.image_size == 128:
    module.img_code_s32 = trunk_block(16 * ndf, 4, sn)
    module.img_code_s32_1 = trunk_block(8 * ndf, 3, sn)
  elif module.image_size == 256:
    module.img_code_s32 = trunk_block(16 * ndf, 4, sn)
    module.img_code_s64 = trunk_block(32 * ndf, 4, sn)
    module.img_code_s64_1 = trunk_block(16 * ndf, 3, sn)
    module.img_code_s64_2 = trunk_block(8 * ndf, 3, sn)


def encode_with_trunk(module: nn.Module, images: jax.Array, train: bool) -> jax.Array:
  """(B, S, S, 3) images in [-1, 1] -> (B, 4, 4, 8 ndf) through `add_image_trunk`'s layers."""
  size = module.image_size
  if images.shape[1:] != (size, size, 3):
    raise ValueError(f'This discriminator takes (B, {size}, {size}, 3) images; '
                     f'got {images.shape}.')
  x = module.img_code_s16(images, train=train)
  if size == 128:
    x = module.img_code_s32_1(module.img_code_s32(x, train=train), train=train)
  elif size == 256:
    for layer in (module.img_code_s32, module.img_code_s64, module.img_code_s64_1,
                  module.img_code_s64_2):
      x = layer(x, train=train)
  return x


class Discriminator(nn.Module):
  """D_NET64 / D_NET128 / D_NET256 with UNCOND_DNET and COND_DNET heads.

  Use `__call__` for everything at once, or (with `apply(..., method=...)`)
  `encode` once and the heads on its output, as the official trainer does
  (e.g. the mismatched pair reuses the real images' features). Initialise
  through `__call__` with a sentence so that both heads get parameters.

  Attributes:
    ndf: discriminator width (DF_DIM; CUB 64, COCO 96).
    image_size: 64, 128 or 256.
    nef: sentence embedding size (256).
    use_uncond: whether the unconditional head exists (False in AttnDCGAN).
    use_spectral_norm: DM-GAN variant: spectral-normalised convs with
      biases, no BN (outlogits stay plain). Apply with
      mutable=['spectral'] in training (see `t2ijax.nn.spectral_norm`).
  """
  ndf: int = 64
  image_size: int = 64
  nef: int = 256
  use_uncond: bool = True
  use_spectral_norm: bool = False

  def setup(self):
    if self.image_size not in DISCRIMINATOR_SIZES:
      raise ValueError(f'Discriminator image_size must be one of '
                       f'{DISCRIMINATOR_SIZES}; got {self.image_size}.')
    ndf, sn = self.ndf, self.use_spectral_norm
    add_image_trunk(self, ndf, sn)
    # Upper-case names, as the official state-dict keys.
    # pylint: disable=invalid-name
    if self.use_uncond:
      self.UNCOND_DNET = LogitsHead(ndf, sn, conditional=False)
    self.COND_DNET = LogitsHead(ndf, sn, conditional=True)
    # pylint: enable=invalid-name

  def encode(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """(B, S, S, 3) images in [-1, 1] -> (B, 4, 4, 8 * ndf) features."""
    return encode_with_trunk(self, images, train)

  def uncond_logits(self, features: jax.Array) -> jax.Array:
    """(B, 4, 4, 8ndf) -> (B,) unconditional logits."""
    if not self.use_uncond:
      raise ValueError('This discriminator has no unconditional head '
                       '(use_uncond=False).')
    return self.UNCOND_DNET(features)

  def cond_logits(self, features: jax.Array, sentence: jax.Array, *,
                  train: bool = False) -> jax.Array:
    """(B, 4, 4, 8ndf) features and (B, nef) sentences -> (B,) logits."""
    if sentence.shape != (features.shape[0], self.nef):
      raise ValueError(f'sentence must be ({features.shape[0]}, {self.nef}); '
                       f'got {sentence.shape}.')
    return self.COND_DNET(features, sentence, train=train)

  def __call__(self, images: jax.Array, sentence: Optional[jax.Array] = None,
               *, train: bool = False) -> dict:
    """Runs the trunk and the heads.

    Args:
      images: (B, S, S, 3) in [-1, 1].
      sentence: (B, nef) raw sentence embedding; None skips the cond head.
      train: BN batch statistics (mutable=['batch_stats']); for the
        spectral-norm variant also make 'spectral' mutable to advance u.

    Returns:
      {'features': (B, 4, 4, 8ndf), 'uncond': (B,) logits (if use_uncond),
       'cond': (B,) logits (if a sentence was given)}.
    """
    features = self.encode(images, train=train)
    out = {'features': features}
    if self.use_uncond:
      out['uncond'] = self.uncond_logits(features)
    if sentence is not None:
      out['cond'] = self.cond_logits(features, sentence, train=train)
    return out
