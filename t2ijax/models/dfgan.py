"""DF-GAN (CVPR 2022 code): one-stage generator with deep text-image fusion.

reference/stackgan_dfgan_family.md §6.2-6.3 (tobran/DF-GAN, code of 2022-09).
NHWC throughout; no normalisation layers anywhere.

NetG(ngf, z_dim, image_size): fc(z) -> (4, 4, 8 ngf); log2(size) - 2 G_Blocks,
each doubling the resolution; to_rgb = LeakyReLU(0.2) -> conv3x3 -> tanh.
The condition of every block is concat[z, sentence] (z first).
  G_Block(in, out): x = up2(x); out = shortcut(x) + residual(x), with
    shortcut = conv1x1 (in != out) or identity, and
    residual = fuse1(x) -> c1 conv3x3 -> fuse2 -> c2 conv3x3,
    fuse = ConditionalAffine -> LReLU(0.2) -> ConditionalAffine -> LReLU(0.2).
NetD(ndf, image_size): conv_img conv3x3 -> D_Blocks down to (4, 4, 8 ndf).
  D_Block(in, out): res = conv4x4 s2 (no bias) -> LReLU -> conv3x3 (no
    bias) -> LReLU; shortcut = avg_pool2(conv_s 1x1 (in != out) or x);
    out = shortcut + gamma * res, gamma a learnable scalar starting at 0.
NetC(ndf): concat[features, sentence tiled to 4x4] (image first) -> conv3x3
  (no bias) -> LReLU -> conv4x4 valid (no bias) -> one logit per image.
Channels: G 8,8,8,8,4,2,1 x ngf from 4 px up (at 256 px); D the reverse.
Init: torch's defaults everywhere (U(+-1/sqrt(fan_in)) weights and biases)
except the affines' last Linears (see `t2ijax.nn.conditional_norm`).

The same functions computed more cheaply (equal up to float rounding; the
tests compare with a PyTorch model written as the official one; the
convolutions are in `t2ijax.nn.fast_conv`):
  * fuse1 and the 1x1 shortcut are per-pixel, so they commute with nearest
    upsampling: both run at the low resolution, then get upsampled;
  * c1 after nearest 2x upsampling is four 2x2 convolutions at the low
    resolution, one per output phase (16 instead of 36 multiply-adds per
    pixel pair of channels; `upsample_conv3x3`);
  * conv_s (1x1) and the 2x2 average pool commute: pool first;
  * D's 4x4 stride-2 convs differentiate through a space-to-depth form
    (`conv4x4_stride2`): MA-GP differentiates D's input gradient again, and
    XLA:CPU runs the kernel gradient of a strided conv's input gradient on a
    slow path (~10x the rest of that conv's work).

Parameter paths (torch key -> flax path; conv weight (O, I, kh, kw) ->
kernel (kh, kw, I, O), Linear weight (O, I) -> kernel (I, O)). netG:
  fc.{weight,bias}                                 fc/{kernel,bias}  (the
      4096 outputs stay in torch's (C, 4, 4) order; the model transposes)
  GBlocks.{i}.c1 / .c2 / .c_sc                     GBlocks_{i}/c1, c2, c_sc
  GBlocks.{i}.fuse{1,2}.affine{0,1}.fc_{gamma,beta}.linear{1,2}
      -> GBlocks_{i}/fuse{1,2}/affine{0,1}/fc_{gamma,beta}/linear{1,2}
  to_rgb.1                                         to_rgb
netD:
  conv_img                                         conv_img
  DBlocks.{i}.conv_r.0 / conv_r.2 / conv_s          DBlocks_{i}/conv_r_0, conv_r_2, conv_s
  DBlocks.{i}.gamma (1,)                           DBlocks_{i}/gamma (1,)
netC:
  joint_conv.0 / joint_conv.2                      joint_conv_0, joint_conv_2
`Discriminator` holds NetD and NetC (one optimizer, as officially) under
`netD/...` and `netC/...`. As in the official state dict, every D_Block has a
conv_s, unused where in == out (so parameter counts and keys match).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.nn import conditional_norm
from t2ijax.nn import fast_conv
from t2ijax.nn import layers
from t2ijax.nn import torch_compat

LEAKY_SLOPE = 0.2


def channel_plan(nf: int, image_size: int) -> list[tuple[int, int]]:
  """(in, out) channels of D's blocks, 4x4 features at the end; G reverses them.

  Raises:
    ValueError: the size is not a power of two of at least 8.
  """
  log2 = math.log2(image_size) if image_size > 0 else 0
  if image_size < 8 or log2 != int(log2):
    raise ValueError(f'DF-GAN needs an image size that is a power of two >= 8; '
                     f'got {image_size}.')
  channels = [nf * min(2 ** i, 8) for i in range(int(log2) - 1)]
  return list(zip(channels[:-1], channels[1:]))


def _conv(features: int, kernel_size: int, *, strides: int = 1, padding: int = 0,
          use_bias: bool = True, name: str) -> layers.Conv2d:
  """torch.nn.Conv2d with torch's default init."""
  return layers.Conv2d(features, kernel_size, strides=strides, padding=padding,
                       use_bias=use_bias, kernel_init=torch_compat.torch_kernel_init(),
                       name=name)


def _leaky(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, LEAKY_SLOPE)


class DFBlock(nn.Module):
  """DFBLK: affine0 -> LReLU(0.2) -> affine1 -> LReLU(0.2) (deep fusion)."""

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    h = _leaky(conditional_norm.ConditionalAffine(name='affine0')(x, cond))
    return _leaky(conditional_norm.ConditionalAffine(name='affine1')(h, cond))


class GBlock(nn.Module):
  """G_Block with upsampling: up2 -> shortcut + fuse/conv residual.

  Attributes:
    features: output channels.
  """
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    """x: (B, H, W, in) -> (B, 2H, 2W, features)."""
    # Official order: up2(x), then fuse1 and c_sc on it. Both are per-pixel,
    # so they run before the upsampling here (4x fewer pixels).
    shortcut = x
    if x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, name='c_sc')(x)
    shortcut = layers.upsample_nearest_2x(shortcut)
    h = DFBlock(name='fuse1')(x, cond)
    h = fast_conv.UpsampleConv3x3(self.features, name='c1')(h)
    h = DFBlock(name='fuse2')(h, cond)
    h = _conv(self.features, 3, padding=1, name='c2')(h)
    return shortcut + h


class NetG(nn.Module):
  """DF-GAN generator.

  Attributes:
    ngf: base width (32 officially).
    z_dim: noise size (100).
    image_size: output side, a power of two >= 8 (256 officially).
  """
  ngf: int = 32
  z_dim: int = 100
  image_size: int = 256

  @nn.compact
  def __call__(self, z: jax.Array, sentence: jax.Array) -> jax.Array:
    """(B, z_dim) noise, (B, D) sentence -> (B, size, size, 3) in [-1, 1]."""
    batch = z.shape[0]
    width = 8 * self.ngf
    h = nn.Dense(width * 16, kernel_init=torch_compat.torch_kernel_init(),
                 bias_init=torch_compat.torch_bias_init(z.shape[-1]), name='fc')(z)
    # torch views the 4096 outputs as (C, 4, 4).
    h = h.reshape(batch, width, 4, 4).transpose(0, 2, 3, 1)
    cond = jnp.concatenate([z, sentence], axis=-1)
    # G's widths are D's backwards: (8 ngf, 8 ngf), ..., (2 ngf, ngf).
    pairs = [(b, a) for a, b in reversed(channel_plan(self.ngf, self.image_size))]
    for i, (_, out) in enumerate(pairs):
      h = GBlock(out, name=f'GBlocks_{i}')(h, cond)
    h = _conv(3, 3, padding=1, name='to_rgb')(_leaky(h))
    return jnp.tanh(h)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
  """F.avg_pool2d(x, 2) on NHWC with even H and W."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class DBlock(nn.Module):
  """D_Block: shortcut (1x1 if widths differ, then 2x2 mean) + gamma * residual.

  Attributes:
    features: output channels.
  """
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, in) -> (B, H/2, W/2, features)."""
    res = _leaky(fast_conv.Conv4x4Stride2(self.features, name='conv_r_0')(x))
    res = _leaky(_conv(self.features, 3, padding=1, use_bias=False, name='conv_r_2')(res))
    conv_s = _conv(self.features, 1, name='conv_s')
    # Pooling first: a 1x1 conv commutes with the average (4x fewer pixels).
    shortcut = avg_pool_2x2(x)
    if x.shape[-1] != self.features:
      shortcut = conv_s(shortcut)
    elif self.is_initializing():
      # Officially created in every block: keep its params for equal keys.
      conv_s(jnp.zeros((1, 1, 1, x.shape[-1]), x.dtype))
    gamma = self.param('gamma', nn.initializers.zeros, (1,))
    return shortcut + gamma * res


class NetD(nn.Module):
  """DF-GAN image trunk: (B, S, S, 3) -> (B, 4, 4, 8 ndf) features.

  Attributes:
    ndf: base width (32 officially).
    image_size: input side (256).
  """
  ndf: int = 32
  image_size: int = 256

  @nn.compact
  def __call__(self, image: jax.Array) -> jax.Array:
    h = _conv(self.ndf, 3, padding=1, name='conv_img')(image)
    for i, (_, out) in enumerate(channel_plan(self.ndf, self.image_size)):
      h = DBlock(out, name=f'DBlocks_{i}')(h)
    return h


class NetC(nn.Module):
  """One-way conditional head: (features, sentence) -> (B,) logits.

  Attributes:
    ndf: base width; the features have 8 ndf channels.
  """
  ndf: int = 32

  @nn.compact
  def __call__(self, features: jax.Array, sentence: jax.Array) -> jax.Array:
    b, h, w, _ = features.shape
    tiled = jnp.broadcast_to(sentence[:, None, None, :], (b, h, w, sentence.shape[-1]))
    x = jnp.concatenate([features, tiled], axis=-1)
    x = _leaky(_conv(2 * self.ndf, 3, padding=1, use_bias=False, name='joint_conv_0')(x))
    x = _conv(1, 4, use_bias=False, name='joint_conv_2')(x)
    return x.reshape(b)


class Discriminator(nn.Module):
  """NetD and NetC together (D's optimizer covers both, as officially).

  Attributes:
    ndf: base width.
    image_size: input side.
  """
  ndf: int = 32
  image_size: int = 256

  def setup(self):
    self.netD = NetD(self.ndf, self.image_size)
    self.netC = NetC(self.ndf)

  def features(self, image: jax.Array) -> jax.Array:
    return self.netD(image)

  def logits(self, features: jax.Array, sentence: jax.Array) -> jax.Array:
    return self.netC(features, sentence)

  def __call__(self, image: jax.Array, sentence: jax.Array) -> jax.Array:
    return self.netC(self.netD(image), sentence)
