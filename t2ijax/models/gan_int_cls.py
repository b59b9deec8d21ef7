"""GAN-INT-CLS (Reed et al., ICML 2016): 64x64 generator, matching-aware D, style encoder.

Layouts follow the official Torch7 `main_cls_int.lua` (reference/
stackgan_dfgan_family.md §3.2-3.4):
  G: text -> Dense(nt) + LeakyReLU(0.2); [z, text] (z first) as a 1x1 map;
     deconv 4x4 -> 8ngf (4x4) BN; residual (8ngf -> 2ngf -> 2ngf -> 8ngf);
     deconv -> 4ngf (8x8) BN; residual (4ngf -> ngf -> ngf -> 4ngf);
     deconv -> 2ngf (16) BN ReLU; -> ngf (32) BN ReLU; -> 3 (64) Tanh.
  D: conv 4x4 s2: 3 -> ndf LReLU; -> 2ndf BN LReLU; -> 4ndf BN (no activation,
     the official quirk); -> 8ndf BN; residual (8ndf -> 2ndf -> 2ndf -> 8ndf)
     LReLU(sum); text Dense(nt) BN1d LReLU tiled 4x4; [image, text] (image
     first); conv 1x1 -> 8ndf BN LReLU; conv 4x4 valid -> 1 logit.
The official code zeroes every conv bias before each step, so the convolutions
here have none. D returns logits (the official Sigmoid is folded into the BCE).

The style encoder S of the paper's style-transfer section (§5.3) is not in the
official code; it mirrors D's image path and regresses z from G(z, t) with a
squared error, so S(x) of a real image x is a noise vector that carries x's
style (pose, background) into G(S(x), t').
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.nn import layers

_CONV_INIT = nn.initializers.normal(0.02)   # N(0, 0.02), biases none


def _deconv(features: int, *, first: bool, name: str) -> nn.ConvTranspose:
  """Torch SpatialFullConvolution 4x4: stride 1 pad 0 (1 -> 4) or stride 2 pad 1.

  transpose_kernel with padding k-1-p per side reproduces torch's output exactly
  (reference §0.1); the kernel is (kh, kw, out, in), torch's (in, out, kh, kw)
  transposed (2, 3, 1, 0).
  """
  if first:
    return nn.ConvTranspose(features, (4, 4), strides=(1, 1), padding=((3, 3), (3, 3)),
                            transpose_kernel=True, use_bias=False,
                            kernel_init=_CONV_INIT, name=name)
  return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                          transpose_kernel=True, use_bias=False, kernel_init=_CONV_INIT,
                          name=name)


def _conv(features: int, kernel: int, stride: int, padding: int, name: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=False,
                 kernel_init=_CONV_INIT, name=name)


def _lrelu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, 0.2)


class Bottleneck(nn.Module):
  """x + [conv1x1 -> inner, BN, act, conv3x3, BN, act, conv3x3 -> out, BN]; act(sum)."""

  inner: int
  activation: str = 'relu'     # relu (G) | lrelu (D)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    act = nn.relu if self.activation == 'relu' else _lrelu
    h = _conv(self.inner, 1, 1, 0, 'conv0')(x)
    h = act(layers.batch_norm(train, name='bn0')(h))
    h = _conv(self.inner, 3, 1, 1, 'conv1')(h)
    h = act(layers.batch_norm(train, name='bn1')(h))
    h = _conv(x.shape[-1], 3, 1, 1, 'conv2')(h)
    h = layers.batch_norm(train, name='bn2')(h)
    return act(x + h)


class Generator(nn.Module):
  """G(z, text) -> (B, 64, 64, 3) in [-1, 1]."""

  ngf: int = 128
  nt: int = 128                # the text projection

  @nn.compact
  def __call__(self, z: jax.Array, text: jax.Array, train: bool = False) -> jax.Array:
    g = self.ngf
    t = _lrelu(nn.Dense(self.nt, name='text_fc')(text))
    x = jnp.concatenate([z, t], axis=-1)[:, None, None, :]          # (B, 1, 1, nz + nt)
    x = layers.batch_norm(train, name='bn0')(_deconv(8 * g, first=True, name='deconv0')(x))
    x = Bottleneck(2 * g, name='res0')(x, train)                    # 4x4
    x = layers.batch_norm(train, name='bn1')(_deconv(4 * g, first=False, name='deconv1')(x))
    x = Bottleneck(g, name='res1')(x, train)                        # 8x8
    x = nn.relu(layers.batch_norm(train, name='bn2')(
        _deconv(2 * g, first=False, name='deconv2')(x)))            # 16x16
    x = nn.relu(layers.batch_norm(train, name='bn3')(
        _deconv(g, first=False, name='deconv3')(x)))                # 32x32
    return jnp.tanh(_deconv(3, first=False, name='deconv4')(x))     # 64x64


class ImagePath(nn.Module):
  """D's image encoder: (B, 64, 64, 3) -> (B, 4, 4, 8ndf)."""

  ndf: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    d = self.ndf
    x = _lrelu(_conv(d, 4, 2, 1, 'conv0')(x))                                      # 32
    x = _lrelu(layers.batch_norm(train, name='bn1')(_conv(2 * d, 4, 2, 1, 'conv1')(x)))  # 16
    # No activation after this BN in main_cls_int.lua (reference §3.3).
    x = layers.batch_norm(train, name='bn2')(_conv(4 * d, 4, 2, 1, 'conv2')(x))         # 8
    x = layers.batch_norm(train, name='bn3')(_conv(8 * d, 4, 2, 1, 'conv3')(x))         # 4
    return Bottleneck(2 * d, activation='lrelu', name='res')(x, train)


class Discriminator(nn.Module):
  """D(image, text) -> (B,) matching logits."""

  ndf: int = 64
  nt: int = 128

  def setup(self):
    self.image_path = ImagePath(self.ndf, name='image')
    self.text_fc = nn.Dense(self.nt, name='text_fc')
    self.text_bn = nn.BatchNorm(momentum=layers.BN_MOMENTUM, epsilon=layers.BN_EPSILON,
                                scale_init=layers.bn_scale_init, name='text_bn')
    self.joint_conv = _conv(8 * self.ndf, 1, 1, 0, 'joint_conv')
    self.joint_bn = nn.BatchNorm(momentum=layers.BN_MOMENTUM, epsilon=layers.BN_EPSILON,
                                 scale_init=layers.bn_scale_init, name='joint_bn')
    self.out_conv = _conv(1, 4, 1, 0, 'out_conv')

  def __call__(self, image: jax.Array, text: jax.Array, train: bool = False) -> jax.Array:
    return self.logits(self.image_path(image, train), text, train)

  def logits(self, features: jax.Array, text: jax.Array, train: bool = False) -> jax.Array:
    """Joint head on (B, 4, 4, 8ndf) image features and (B, T) text."""
    t = _lrelu(self.text_bn(self.text_fc(text), use_running_average=not train))
    t = jnp.broadcast_to(t[:, None, None, :], (*features.shape[:3], t.shape[-1]))
    x = jnp.concatenate([features, t], axis=-1)
    x = _lrelu(self.joint_bn(self.joint_conv(x), use_running_average=not train))
    return self.out_conv(x).reshape(x.shape[0])


class StyleEncoder(nn.Module):
  """S(image) -> (B, z_dim): the noise G would need to draw this image's style."""

  ndf: int = 64
  z_dim: int = 100

  @nn.compact
  def __call__(self, image: jax.Array, train: bool = False) -> jax.Array:
    x = ImagePath(self.ndf, name='image')(image, train)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.z_dim, name='out')(x)
