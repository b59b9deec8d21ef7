"""Inception-v3 in Flax linen, with parameter paths that mirror torchvision.

One parameter layout serves three flavours that differ only in pooling and
in whether BatchNorm has a scale:

* 'torchvision': torchvision's `inception_v3` blocks. The DAMSM image encoder of
  AttnGAN / DM-GAN / MirrorGAN is built on it (local features = Mixed_6e,
  global features = the 2048-d average pool).
* 'fid': pytorch-fid's port of the 2015-12-05 TensorFlow graph. Its branch pools
  in Mixed_5b..5d, Mixed_6b..6e and Mixed_7b exclude the zero padding from the
  average (TF semantics), and Mixed_7c max-pools instead of averaging.
* 'tf_slim': the Inception-v3 of the old TF-slim library
  (tensorflow/models inception/inception/slim), which StackGAN's Inception
  Score classifier fine-tuned on CUB / flowers is built with. Every branch
  pool, Mixed_7c's included, averages without the padding, and its
  BatchNorm has no scale (slim's `batch_norm(scale=False)`): the `bn`
  modules hold only `bias` (slim's beta) and the running statistics. The
  converter from its TF checkpoint is `t2ijax/convert/tf_slim_inception.py`;
  `stackgan_is_preprocess` is its input transform.

Submodules carry torchvision's names (`Conv2d_1a_3x3`, `Mixed_5b/branch1x1`,
each with a bias-free `conv` and a `bn`), so a torchvision key such as
`Mixed_5b.branch1x1.bn.running_mean` lives at
`batch_stats/Mixed_5b/branch1x1/bn/mean`; the converter is
`t2ijax/convert/torch_inception.py`.

The network takes NHWC images already resized and scaled by the caller: the
DAMSM encoder feeds [-1, 1] images resized with `resize_bilinear_align_corners`,
FID feeds `fid_preprocess(images_in_0_1)`. torchvision's `transform_input` is
never applied (neither DAMSM nor pytorch-fid use it).
"""

import functools
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.errors import ConfigError

FLAVORS = ('torchvision', 'fid', 'tf_slim')

# torch BatchNorm2d(eps=0.001, momentum=0.1); flax's momentum is the weight of
# the old running value, hence 0.9.
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.9

# How the 3x3 stride-1 pool branch of Inception A / C / E pools, per flavour.
_AVG_WITH_PAD = 'avg_count_include_pad'
_AVG_WITHOUT_PAD = 'avg_exclude_pad'
_MAX = 'max'
_BRANCH_POOL_BY_FLAVOR = {
    'torchvision': {'A': _AVG_WITH_PAD, 'C': _AVG_WITH_PAD,
                    'E_1': _AVG_WITH_PAD, 'E_2': _AVG_WITH_PAD},
    'fid': {'A': _AVG_WITHOUT_PAD, 'C': _AVG_WITHOUT_PAD,
            'E_1': _AVG_WITHOUT_PAD, 'E_2': _MAX},
    # slim's avg_pool(3x3, stride 1, 'SAME') in every block.
    'tf_slim': {'A': _AVG_WITHOUT_PAD, 'C': _AVG_WITHOUT_PAD,
                'E_1': _AVG_WITHOUT_PAD, 'E_2': _AVG_WITHOUT_PAD},
}
# TF-slim's checkpoints have no BatchNorm gamma. The module then has no scale
# parameter at all, rather than one the converter pins to 1: the variable
# tree stays what the checkpoint holds (the converter's list of expected
# names comes from the model), and no gamma can be trained by accident.
_BN_SCALE_BY_FLAVOR = {'torchvision': True, 'fid': True, 'tf_slim': False}

FID_IMAGE_SIZE = 299
# StackGAN-inception-model resizes every image to 299x299.
STACKGAN_IS_IMAGE_SIZE = 299


def _pool_3x3_same(x: jax.Array, kind: str) -> jax.Array:
  """3x3, stride 1, padding 1 pool with torch's semantics for `kind`."""
  window, strides, padding = (3, 3), (1, 1), ((1, 1), (1, 1))
  if kind == _MAX:
    # Flax pads max pools with -inf, like torch.
    return nn.max_pool(x, window, strides, padding)
  return nn.avg_pool(x, window, strides, padding,
                     count_include_pad=(kind == _AVG_WITH_PAD))


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
  # torch max_pool2d(3, stride=2) floors the output size, which is VALID.
  return nn.max_pool(x, (3, 3), (2, 2), 'VALID')


class BasicConv2d(nn.Module):
  """torchvision's BasicConv2d: conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU.

  `padding` is torch's symmetric (pad_h, pad_w); `bn_scale` False drops the
  BatchNorm scale (TF-slim).
  """
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  dtype: Any = jnp.float32
  precision: Any = None
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pad_h, pad_w = self.padding
    x = nn.Conv(self.features, self.kernel_size,
                strides=(self.strides, self.strides),
                padding=((pad_h, pad_h), (pad_w, pad_w)),
                use_bias=False, dtype=self.dtype, precision=self.precision,
                name='conv')(x)
    # Two-pass variance: E[x^2] - E[x]^2 loses digits when |mean| >> std.
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                     epsilon=_BN_EPSILON, use_fast_variance=False,
                     use_scale=self.bn_scale, dtype=self.dtype, name='bn')(x)
    return nn.relu(x)


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b/5c/5d): concat [1x1, 5x5, 3x3dbl, pool]."""
  pool_features: int
  pool_kind: str
  dtype: Any = jnp.float32
  precision: Any = None
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(BasicConv2d, dtype=self.dtype,
                             precision=self.precision, bn_scale=self.bn_scale)
    branch1x1 = conv(64, (1, 1), name='branch1x1')(x, train)

    branch5x5 = conv(48, (1, 1), name='branch5x5_1')(x, train)
    branch5x5 = conv(64, (5, 5), padding=(2, 2),
                     name='branch5x5_2')(branch5x5, train)

    branch3x3dbl = conv(64, (1, 1), name='branch3x3dbl_1')(x, train)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1),
                        name='branch3x3dbl_2')(branch3x3dbl, train)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1),
                        name='branch3x3dbl_3')(branch3x3dbl, train)

    branch_pool = _pool_3x3_same(x, self.pool_kind)
    branch_pool = conv(self.pool_features, (1, 1),
                       name='branch_pool')(branch_pool, train)
    return jnp.concatenate(
        [branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """35x35 -> 17x17 reduction (Mixed_6a): concat [3x3, 3x3dbl, max pool]."""
  dtype: Any = jnp.float32
  precision: Any = None
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(BasicConv2d, dtype=self.dtype,
                             precision=self.precision, bn_scale=self.bn_scale)
    branch3x3 = conv(384, (3, 3), strides=2, name='branch3x3')(x, train)

    branch3x3dbl = conv(64, (1, 1), name='branch3x3dbl_1')(x, train)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1),
                        name='branch3x3dbl_2')(branch3x3dbl, train)
    branch3x3dbl = conv(96, (3, 3), strides=2,
                        name='branch3x3dbl_3')(branch3x3dbl, train)

    branch_pool = _max_pool_3x3_stride2(x)
    return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convs (Mixed_6b..6e).

  Concat [1x1, 7x7, 7x7dbl, pool].
  """
  channels_7x7: int
  pool_kind: str
  dtype: Any = jnp.float32
  precision: Any = None
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(BasicConv2d, dtype=self.dtype,
                             precision=self.precision, bn_scale=self.bn_scale)
    c7 = self.channels_7x7
    branch1x1 = conv(192, (1, 1), name='branch1x1')(x, train)

    branch7x7 = conv(c7, (1, 1), name='branch7x7_1')(x, train)
    branch7x7 = conv(c7, (1, 7), padding=(0, 3),
                     name='branch7x7_2')(branch7x7, train)
    branch7x7 = conv(192, (7, 1), padding=(3, 0),
                     name='branch7x7_3')(branch7x7, train)

    branch7x7dbl = conv(c7, (1, 1), name='branch7x7dbl_1')(x, train)
    branch7x7dbl = conv(c7, (7, 1), padding=(3, 0),
                        name='branch7x7dbl_2')(branch7x7dbl, train)
    branch7x7dbl = conv(c7, (1, 7), padding=(0, 3),
                        name='branch7x7dbl_3')(branch7x7dbl, train)
    branch7x7dbl = conv(c7, (7, 1), padding=(3, 0),
                        name='branch7x7dbl_4')(branch7x7dbl, train)
    branch7x7dbl = conv(192, (1, 7), padding=(0, 3),
                        name='branch7x7dbl_5')(branch7x7dbl, train)

    branch_pool = _pool_3x3_same(x, self.pool_kind)
    branch_pool = conv(192, (1, 1), name='branch_pool')(branch_pool, train)
    return jnp.concatenate(
        [branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """17x17 -> 8x8 reduction (Mixed_7a): concat [3x3, 7x7x3, max pool]."""
  dtype: Any = jnp.float32
  precision: Any = None
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(BasicConv2d, dtype=self.dtype,
                             precision=self.precision, bn_scale=self.bn_scale)
    branch3x3 = conv(192, (1, 1), name='branch3x3_1')(x, train)
    branch3x3 = conv(320, (3, 3), strides=2,
                     name='branch3x3_2')(branch3x3, train)

    branch7x7x3 = conv(192, (1, 1), name='branch7x7x3_1')(x, train)
    branch7x7x3 = conv(192, (1, 7), padding=(0, 3),
                       name='branch7x7x3_2')(branch7x7x3, train)
    branch7x7x3 = conv(192, (7, 1), padding=(3, 0),
                       name='branch7x7x3_3')(branch7x7x3, train)
    branch7x7x3 = conv(192, (3, 3), strides=2,
                       name='branch7x7x3_4')(branch7x7x3, train)

    branch_pool = _max_pool_3x3_stride2(x)
    return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with expanded filter banks (Mixed_7b, Mixed_7c).

  Concat [1x1, (3x3_2a, 3x3_2b), (3x3dbl_3a, 3x3dbl_3b), pool].
  """
  pool_kind: str
  dtype: Any = jnp.float32
  precision: Any = None
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(BasicConv2d, dtype=self.dtype,
                             precision=self.precision, bn_scale=self.bn_scale)
    branch1x1 = conv(320, (1, 1), name='branch1x1')(x, train)

    branch3x3 = conv(384, (1, 1), name='branch3x3_1')(x, train)
    branch3x3 = jnp.concatenate([
        conv(384, (1, 3), padding=(0, 1),
             name='branch3x3_2a')(branch3x3, train),
        conv(384, (3, 1), padding=(1, 0),
             name='branch3x3_2b')(branch3x3, train),
    ], axis=-1)

    branch3x3dbl = conv(448, (1, 1), name='branch3x3dbl_1')(x, train)
    branch3x3dbl = conv(384, (3, 3), padding=(1, 1),
                        name='branch3x3dbl_2')(branch3x3dbl, train)
    branch3x3dbl = jnp.concatenate([
        conv(384, (1, 3), padding=(0, 1),
             name='branch3x3dbl_3a')(branch3x3dbl, train),
        conv(384, (3, 1), padding=(1, 0),
             name='branch3x3dbl_3b')(branch3x3dbl, train),
    ], axis=-1)

    branch_pool = _pool_3x3_same(x, self.pool_kind)
    branch_pool = conv(192, (1, 1), name='branch_pool')(branch_pool, train)
    return jnp.concatenate(
        [branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionV3(nn.Module):
  """Inception-v3 trunk (no AuxLogits) with an optional classifier.

  Attributes:
    flavor: 'torchvision', 'fid' (pytorch-fid pooling) or 'tf_slim' (StackGAN's
      IS classifier); see the module doc.
    num_classes: size of the `fc` classifier (1000 torchvision ImageNet, 1008
      for the FID / 2015-12-05 graph, 51 or 21 for StackGAN's CUB or flowers
      classifier: its classes plus a background class 0); None builds no
      classifier.
    dtype: computation dtype; parameters stay float32.
    precision: `jax.lax.Precision` of the convs and fc. None is the backend
      default, which on recent NVIDIA GPUs may run float32 convs in TF32;
      pass `jax.lax.Precision.HIGHEST` where features must match the float32
      reference (FID, IS).

  Call with NHWC images of at least 75x75 (299x299 for the published
  features) and `train`: False normalises with the running statistics; True
  uses batch statistics and updates `batch_stats` (pass
  `mutable=['batch_stats']`), as DAMSM pretraining did to the frozen
  Inception. Flax blends the biased batch variance into the running
  variance where torch blends the unbiased one, a factor (N - 1) / N for
  N = batch * height * width values per channel.

  Returns a dict:
    'mixed_6e': (B, 17, 17, 768) at 299 input, DAMSM's local features;
    'mixed_7c': (B, 8, 8, 2048);
    'pool3': (B, 2048), the spatial mean of mixed_7c (FID features, DAMSM's
      global features);
    'logits': (B, num_classes), only when num_classes is set. The dropout
      before `fc` (torchvision's, slim's) is not applied: the classifier is
      used frozen.
  """
  flavor: str = 'torchvision'
  num_classes: Optional[int] = None
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    if self.flavor not in _BRANCH_POOL_BY_FLAVOR:
      raise ConfigError(
          f'Unknown Inception flavor {self.flavor!r}; use one of {FLAVORS}.')
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(
          f'Inception expects NHWC RGB images (B, H, W, 3); got {x.shape}.')
    pools = _BRANCH_POOL_BY_FLAVOR[self.flavor]
    numerics = {'dtype': self.dtype, 'precision': self.precision,
                'bn_scale': _BN_SCALE_BY_FLAVOR[self.flavor]}
    conv = functools.partial(BasicConv2d, **numerics)
    x = x.astype(self.dtype)

    x = conv(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x, train)
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x, train)
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x, train)
    x = _max_pool_3x3_stride2(x)
    x = conv(80, (1, 1), name='Conv2d_3b_1x1')(x, train)
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x, train)
    x = _max_pool_3x3_stride2(x)

    x = InceptionA(32, pools['A'], **numerics, name='Mixed_5b')(x, train)
    x = InceptionA(64, pools['A'], **numerics, name='Mixed_5c')(x, train)
    x = InceptionA(64, pools['A'], **numerics, name='Mixed_5d')(x, train)
    x = InceptionB(**numerics, name='Mixed_6a')(x, train)
    for name, channels_7x7 in (('Mixed_6b', 128), ('Mixed_6c', 160),
                               ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = InceptionC(channels_7x7, pools['C'], **numerics, name=name)(x, train)
    mixed_6e = x

    x = InceptionD(**numerics, name='Mixed_7a')(x, train)
    x = InceptionE(pools['E_1'], **numerics, name='Mixed_7b')(x, train)
    x = InceptionE(pools['E_2'], **numerics, name='Mixed_7c')(x, train)
    mixed_7c = x
    # torch's AdaptiveAvgPool2d(1) (slim: a VALID average pool over the
    # whole map) is the spatial mean at any input size.
    pool3 = jnp.mean(x, axis=(1, 2))

    outputs = {'mixed_6e': mixed_6e, 'mixed_7c': mixed_7c, 'pool3': pool3}
    if self.num_classes is not None:
      outputs['logits'] = nn.Dense(self.num_classes, dtype=self.dtype,
                                   precision=self.precision, name='fc')(pool3)
    return outputs


def _bilinear_taps(in_size: int, out_size: int, align_corners: bool):
  """Source indices and weights of torch's bilinear resize along one axis.

  Sizes are static, so these are host constants. torch derives them in
  float32, with the source position as one fused multiply-add; reproducing
  that rounding (float64 product, one rounding to float32) reproduced
  torch 2.x's CPU weights bit for bit on x86, instead of up to ~4e-6 apart.

  Returns:
    (low, high, weight_low, weight_high): output i = weight_low[i] *
    in[low[i]] + weight_high[i] * in[high[i]].
  """
  f32 = np.float32
  out_index = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
    source = (np.float64(scale) * out_index).astype(f32)
  else:
    scale = f32(in_size) / f32(out_size)
    # Half-pixel centres; torch clamps positions left of pixel 0 to 0.
    source = (np.float64(scale) * (out_index + 0.5) - 0.5).astype(f32)
    source = np.maximum(source, f32(0))
  low = np.minimum(np.floor(source).astype(np.int32), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  weight_high = np.clip(source - low.astype(f32), 0, 1).astype(f32)
  return low, high, f32(1) - weight_high, weight_high


def _resize_axis(x: jax.Array, axis: int, out_size: int,
                 align_corners: bool) -> jax.Array:
  in_size = x.shape[axis]
  if in_size == out_size:
    # Both conventions map every pixel onto itself at equal size.
    return x
  low, high, weight_low, weight_high = _bilinear_taps(
      in_size, out_size, align_corners)
  shape = [1] * x.ndim
  shape[axis] = out_size
  weight_low = jnp.asarray(weight_low.reshape(shape), x.dtype)
  weight_high = jnp.asarray(weight_high.reshape(shape), x.dtype)
  return (jnp.take(x, low, axis=axis) * weight_low
          + jnp.take(x, high, axis=axis) * weight_high)


def _resize_bilinear(x: jax.Array, size: Union[int, Sequence[int]],
                     align_corners: bool) -> jax.Array:
  if x.ndim != 4:
    raise ValueError(f'Expected NHWC images (B, H, W, C); got {x.shape}.')
  out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  x = _resize_axis(x, 1, out_h, align_corners)
  return _resize_axis(x, 2, out_w, align_corners)


def resize_bilinear_align_corners(
    x: jax.Array, size: Union[int, Sequence[int]]) -> jax.Array:
  """torch `F.interpolate(mode='bilinear', align_corners=True)` on NHWC.

  Corner pixels of input and output coincide. This is what the DAMSM image
  encoder used (`nn.Upsample(size=(299, 299), mode='bilinear')` in PyTorch
  0.3, explicit align_corners=True later); `jax.image.resize` uses
  half-pixel centres instead, so it would not match.

  Args:
    x: (B, H, W, C) images; integer inputs are cast to float32.
    size: output size, an int for square or (height, width).
  """
  return _resize_bilinear(x, size, align_corners=True)


def resize_bilinear_half_pixel(
    x: jax.Array, size: Union[int, Sequence[int]]) -> jax.Array:
  """torch `F.interpolate(mode='bilinear', align_corners=False)` on NHWC.

  No antialiasing when downsampling, unlike `jax.image.resize`'s default.
  """
  return _resize_bilinear(x, size, align_corners=False)


def fid_preprocess(images_0_1: jax.Array) -> jax.Array:
  """pytorch-fid's input transform: bilinear to 299x299, then [0,1] -> [-1,1].

  Args:
    images_0_1: (B, H, W, 3) float images in [0, 1] (uint8 / 255).

  Returns:
    (B, 299, 299, 3) in [-1, 1], ready for `InceptionV3(flavor='fid')`.
  """
  x = resize_bilinear_half_pixel(images_0_1, FID_IMAGE_SIZE)
  return 2 * x - 1


def stackgan_is_preprocess(images_0_255: jax.Array) -> jax.Array:
  """StackGAN-inception-model's input transform, for InceptionV3('tf_slim').

  The official script resizes each image with `scipy.misc.imresize(img,
  (299, 299, 3), interp='bilinear')`, i.e. PIL's bilinear resize of a uint8
  image, which gives uint8 back, and feeds `img / 127.5 - 1`. PIL resizes
  in two passes, width first, each rounded to uint8 (half up); so does this
  (the order is PIL's for square outputs from square or upscaled inputs,
  as generated images are; recent Pillow shrinks the more reduced axis
  first when downscaling). PIL's filter is the triangle scaled by the
  reduction when downscaling (antialiased), plain bilinear with half-pixel
  centres when upscaling, as `jax.image.resize('linear', antialias=True)`.
  Against Pillow 13 on random uint8 images, under 1% of the values differ,
  by one level (PIL's fixed-point weights).

  Args:
    images_0_255: (B, H, W, 3) uint8 images, or floats in [0, 255].

  Returns:
    (B, 299, 299, 3) float32 in [-1, 1].
  """
  if images_0_255.ndim != 4:
    raise ValueError(
        f'Expected NHWC images (B, H, W, C); got {images_0_255.shape}.')
  x = images_0_255.astype(jnp.float32)
  batch, height, _, channels = x.shape
  size = STACKGAN_IS_IMAGE_SIZE
  for shape in ((batch, height, size, channels), (batch, size, size, channels)):
    if x.shape != shape:
      x = jax.image.resize(x, shape, 'linear', antialias=True,
                           precision=jax.lax.Precision.HIGHEST)
    # To uint8 as PIL does: round half up, clip.
    x = jnp.clip(jnp.floor(x + 0.5), 0, 255)
  return x / 127.5 - 1
