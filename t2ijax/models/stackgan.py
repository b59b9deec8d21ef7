"""StackGAN (v1) as its PyTorch release builds it: Stage-I and Stage-II, NHWC.

Reference: reference/stackgan_dfgan_family.md §4.8-§4.10
(hanzhanggit/StackGAN-Pytorch; the TF release's networks differ, §4.2-§4.5).

Stage-I G: CA (Dense to 2 * condition_dim, ReLU, split mu / logvar) ->
concat(z, c) -> fc (no bias) + BN1d + ReLU viewed as (8 gf_dim, 4, 4) -> four
ReLU upBlocks (nearest 2x, conv3x3, BN, ReLU) -> conv3x3 + tanh: 64x64.
Stage-I D: a 16x strided trunk to (4, 4, 8 df_dim); conditional head:
concat(code, tiled c) -> conv3x3 BN LeakyReLU -> 4x4/4 conv (bias).
Stage-II G: holds the Stage-I G (`STAGE1_G`, frozen by the trainer, its image
detached) and refines its image: encoder to (S/4, S/4, 4 gf_dim), concat
(code, tiled c of its own CA) -> hr_joint -> r_num ReLU ResBlocks -> upBlocks
to the output size -> conv3x3 + tanh (256 officially; any power of two >= 32
from a 64x64 Stage-I, e.g. 128 for a CPU demo).
Stage-II D: the strided trunk down to 4x4, 3x3 blocks back to 8 df_dim, and a
conditional and an unconditional head.
Heads return logits (the official Sigmoid + BCELoss is the loss's sigmoid
cross-entropy). Initialisation is the official weights_init: conv and linear
kernels N(0, 0.02), linear biases 0, BN scale N(1, 0.02); conv biases keep
torch's default.

Parameter paths (torch key -> flax path; `[BN]` = weight/bias -> params
scale/bias, running_mean/var -> batch_stats mean/var):
  [STAGE1_G.]ca_net.fc             [STAGE1_G/]ca_net/fc
  STAGE1_G.fc.0 / .fc.1 [BN]       STAGE1_G/fc, STAGE1_G/fc_bn
  STAGE1_G.upsample{k}.1 / .2      STAGE1_G/upsample{k}/conv, /bn
  STAGE1_G.img.0                   STAGE1_G/img
  encoder.0 / .2 / .3 / .5 / .6    encoder/conv_0, conv_1, bn_1, conv_2, bn_2
  hr_joint.0 / .1                  hr_joint/conv, /bn
  residual.{i}.block.{0,1,3,4}     residual_{i}/conv1, bn1, conv2, bn2
  upsample{k}.1 / .2, img.0        upsample{k}/conv, /bn, img
  D encode_img.{0,2,5,8,...}       encode_img/conv_{0,1,2,...} (Sequential
                                   order), BNs encode_img/bn_{1,2,...}
  D get_cond_logits.outlogits.0 / .1 / .3
                                   get_cond_logits/joint_conv, joint_bn, out
  D get_uncond_logits.outlogits.0  get_uncond_logits/out
The fc output is viewed channel-major (B, C, 4, 4) as officially, so its
kernel and BN map without permutation.
"""

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.nn import layers

# Stage-I's fc is 8 * gf_dim wide at 4x4 (STAGE1_G.gf_dim = GF_DIM * 8).
STAGE1_WIDTH_FACTOR = 8
BASE_SIDE = 4


def normal_init(stddev: float = 0.02) -> layers.Initializer:
  return nn.initializers.normal(stddev)


def _conv(features: int, kernel_size: int, *, strides: int = 1,
          padding: int = 0, use_bias: bool = False, name: str) -> layers.Conv2d:
  return layers.Conv2d(features, kernel_size, strides=strides, padding=padding,
                       use_bias=use_bias, kernel_init=normal_init(), name=name)


def _conv3x3(features: int, name: str) -> layers.Conv2d:
  return _conv(features, 3, padding=1, name=name)


def tile(code: jax.Array, side: int) -> jax.Array:
  """(B, C) -> (B, side, side, C)."""
  return jnp.broadcast_to(code[:, None, None, :],
                          (code.shape[0], side, side, code.shape[-1]))


class ConditioningAugmentation(nn.Module):
  """CA_NET of StackGAN-Pytorch: Dense(2 * condition_dim) -> ReLU -> mu, logvar."""
  condition_dim: int = 128

  @nn.compact
  def __call__(self, embedding: jax.Array, key: Optional[jax.Array] = None,
               noise: Optional[jax.Array] = None):
    """Returns c = mu + exp(logvar / 2) * eps, mu, logvar (each (B, condition_dim))."""
    if (key is None) == (noise is None):
      raise ValueError('Pass exactly one of key and noise to the conditioning '
                       'augmentation.')
    x = nn.relu(nn.Dense(2 * self.condition_dim, kernel_init=normal_init(),
                         bias_init=nn.initializers.zeros, name='fc')(embedding))
    mu, logvar = jnp.split(x, 2, axis=-1)
    if noise is None:
      noise = jax.random.normal(key, mu.shape, mu.dtype)
    return mu + jnp.exp(0.5 * logvar) * noise, mu, logvar


class UpBlock(nn.Module):
  """upBlock: nearest 2x -> conv3x3 (no bias) -> BN -> ReLU."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = _conv3x3(self.features, 'conv')(layers.upsample_nearest_2x(x))
    return nn.relu(layers.batch_norm(train, name='bn')(x))


class ResBlock(nn.Module):
  """ReLU(x + BN(conv3x3(ReLU(BN(conv3x3(x)))))): v1's block (no GLU)."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    c = x.shape[-1]
    y = nn.relu(layers.batch_norm(train, name='bn1')(_conv3x3(c, 'conv1')(x)))
    y = layers.batch_norm(train, name='bn2')(_conv3x3(c, 'conv2')(y))
    return nn.relu(x + y)


class Stage1Generator(nn.Module):
  """STAGE1_G: text embedding and noise -> 64x64 image.

  Attributes:
    gf_dim: GAN.GF_DIM (192 for COCO); the fc is 8 * gf_dim wide at 4x4.
    condition_dim: GAN.CONDITION_DIM, the CA code (128).
    z_dim: Z_DIM (100).
  """
  gf_dim: int = 192
  condition_dim: int = 128
  z_dim: int = 100

  @nn.compact
  def __call__(self, z: jax.Array, embedding: jax.Array, *,
               ca_key: Optional[jax.Array] = None,
               ca_noise: Optional[jax.Array] = None,
               train: bool = False) -> dict:
    """Returns {'images': [(B, 64, 64, 3)], 'mu', 'logvar': (B, condition_dim)}."""
    if z.shape != (embedding.shape[0], self.z_dim):
      raise ValueError(f'z must be ({embedding.shape[0]}, {self.z_dim}); got '
                       f'{z.shape}.')
    c, mu, logvar = ConditioningAugmentation(self.condition_dim, name='ca_net')(
        embedding, key=ca_key, noise=ca_noise)
    width = STAGE1_WIDTH_FACTOR * self.gf_dim
    x = nn.Dense(width * BASE_SIDE**2, use_bias=False, kernel_init=normal_init(),
                 name='fc')(jnp.concatenate([z, c], axis=-1))   # z first
    x = nn.relu(layers.batch_norm(train, name='fc_bn')(x))
    x = x.reshape(-1, width, BASE_SIDE, BASE_SIDE).transpose(0, 2, 3, 1)
    for k in range(1, 5):
      x = UpBlock(width // 2**k, name=f'upsample{k}')(x, train=train)
    return {'images': [jnp.tanh(_conv3x3(3, 'img')(x))], 'mu': mu, 'logvar': logvar}


class Stage2Generator(nn.Module):
  """STAGE2_G: the Stage-I G plus a refiner to `image_size`.

  Attributes:
    gf_dim: GAN.GF_DIM of Stage-II (192 for COCO).
    condition_dim: its own CA's code size (128).
    r_num: ResBlocks (R_NUM; 2 in coco_s2.yml).
    image_size: output side (256 officially): log2(image_size / 16) upBlocks
      follow the 16x16 encoding of the 64x64 Stage-I image.
    stage1_gf_dim, stage1_condition_dim, z_dim: the Stage-I generator's.
  """
  gf_dim: int = 192
  condition_dim: int = 128
  r_num: int = 2
  image_size: int = 256
  stage1_gf_dim: int = 192
  stage1_condition_dim: int = 128
  z_dim: int = 100

  @nn.compact
  def __call__(self, z: jax.Array, embedding: jax.Array, *,
               ca_key: Optional[jax.Array] = None,
               ca_noise: Optional[jax.Array] = None,
               stage1_train: Optional[bool] = None,
               train: bool = False) -> dict:
    """Generates the Stage-I image and refines it.

    Args:
      z: (B, z_dim) noise of the Stage-I generator.
      embedding: (B, D) text embedding (both CAs read it).
      ca_key: PRNG key of both CAs' noise (split); or ca_noise.
      ca_noise: ((B, stage1 condition_dim), (B, condition_dim)) noise.
      stage1_train: BN mode of the frozen Stage-I (default: `train`, as the
        official code leaves the whole STAGE2_G in train mode).
      train: BN batch statistics (apply with mutable=['batch_stats']).

    Returns:
      {'images': [Stage-I (B, 64, 64, 3), Stage-II (B, S, S, 3)],
       'mu', 'logvar': Stage-II's CA Gaussian}.
    """
    if ca_key is not None:
      k1, k2 = jax.random.split(ca_key)
      n1 = n2 = None
    else:
      k1 = k2 = None
      n1, n2 = ca_noise
    stage1 = Stage1Generator(self.stage1_gf_dim, self.stage1_condition_dim,
                             self.z_dim, name='STAGE1_G')
    low = stage1(z, embedding, ca_key=k1, ca_noise=n1,
                 train=train if stage1_train is None else stage1_train)['images'][0]
    low = jax.lax.stop_gradient(low)                     # officially detached
    c, mu, logvar = ConditioningAugmentation(self.condition_dim, name='ca_net')(
        embedding, key=k2, noise=n2)
    ngf = self.gf_dim
    x = Encoder(ngf, name='encoder')(low, train=train)
    side = x.shape[1]
    num_up = math.log2(self.image_size / side)
    if num_up != int(num_up) or num_up < 1:
      raise ValueError(f'image_size {self.image_size} must be a power-of-two '
                       f'multiple of the encoded Stage-I side {side}.')
    x = jnp.concatenate([x, tile(c, side)], axis=-1)     # image code first
    x = ConvBnRelu(4 * ngf, name='hr_joint')(x, train=train)
    for i in range(self.r_num):
      x = ResBlock(name=f'residual_{i}')(x, train=train)
    for k in range(1, int(num_up) + 1):
      x = UpBlock(4 * ngf // 2**k, name=f'upsample{k}')(x, train=train)
    return {'images': [low, jnp.tanh(_conv3x3(3, 'img')(x))], 'mu': mu,
            'logvar': logvar}


class ConvBnRelu(nn.Module):
  """conv3x3 (no bias) -> BN -> ReLU (Stage-II's hr_joint)."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = _conv3x3(self.features, 'conv')(x)
    return nn.relu(layers.batch_norm(train, name='bn')(x))


class Encoder(nn.Module):
  """Stage-II's image encoder: (B, S, S, 3) -> (B, S/4, S/4, 4 gf_dim).

  conv3x3 (3 -> gf_dim) ReLU (no BN), then two 4x4/2 convs with BN and ReLU.
  """
  gf_dim: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.relu(_conv3x3(self.gf_dim, 'conv_0')(x))
    for i in (1, 2):
      x = _conv(self.gf_dim * 2**i, 4, strides=2, padding=1, name=f'conv_{i}')(x)
      x = nn.relu(layers.batch_norm(train, name=f'bn_{i}')(x))
    return x


class ImageEncoder(nn.Module):
  """encode_img: 4x4/2 convs down to 4x4, then 3x3 blocks back to 8 df_dim.

  conv_0 (3 -> df_dim) LeakyReLU; conv_i (i >= 1) doubles the channels with
  BN and LeakyReLU until the map is 4x4 (4 convs from 64, 6 from 256); then
  3x3 convs halve the channels (BN, LeakyReLU) down to 8 df_dim (none from
  64, two from 256: 32 -> 16 -> 8 df_dim). No conv has a bias.
  """
  df_dim: int

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    num_down = int(round(math.log2(images.shape[1] / BASE_SIDE)))
    x, index = images, 0
    for index in range(num_down):
      x = _conv(self.df_dim * 2**index, 4, strides=2, padding=1,
                name=f'conv_{index}')(x)
      if index > 0:
        x = layers.batch_norm(train, name=f'bn_{index}')(x)
      x = nn.leaky_relu(x, layers.LEAKY_SLOPE)
    channels = self.df_dim * 2**index
    while channels > 8 * self.df_dim:
      index += 1
      channels //= 2
      x = _conv3x3(channels, f'conv_{index}')(x)
      x = nn.leaky_relu(layers.batch_norm(train, name=f'bn_{index}')(x),
                        layers.LEAKY_SLOPE)
    return x


class LogitsHead(nn.Module):
  """D_GET_LOGITS: [concat(code, tiled c) -> conv3x3 BN LeakyReLU] -> 4x4/4 conv."""
  df_dim: int
  conditional: bool = True

  @nn.compact
  def __call__(self, code: jax.Array, condition: Optional[jax.Array] = None, *,
               train: bool = False) -> jax.Array:
    x = code
    if self.conditional:
      x = jnp.concatenate([code, tile(condition, code.shape[1])], axis=-1)
      x = _conv3x3(8 * self.df_dim, 'joint_conv')(x)
      x = nn.leaky_relu(layers.batch_norm(train, name='joint_bn')(x),
                        layers.LEAKY_SLOPE)
    out = _conv(1, BASE_SIDE, strides=BASE_SIDE, use_bias=True, name='out')(x)
    return out.reshape(-1)


class Discriminator(nn.Module):
  """STAGE1_D (image_size 64, no unconditional head) or STAGE2_D (256).

  Attributes:
    df_dim: GAN.DF_DIM (96 for COCO).
    condition_dim: the condition's size (G's CA mean, 128).
    image_size: a power of two >= 64 (64 Stage-I, 256 Stage-II).
    use_uncond: the unconditional head (Stage-II only, officially).
  """
  df_dim: int = 96
  condition_dim: int = 128
  image_size: int = 64
  use_uncond: bool = False

  def setup(self):
    if self.image_size < 64 or self.image_size & (self.image_size - 1):
      raise ValueError(f'Discriminator image_size must be a power of two >= 64; '
                       f'got {self.image_size}.')
    self.encode_img = ImageEncoder(self.df_dim)
    self.get_cond_logits = LogitsHead(self.df_dim, conditional=True)
    if self.use_uncond:
      self.get_uncond_logits = LogitsHead(self.df_dim, conditional=False)

  def encode(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """(B, S, S, 3) in [-1, 1] -> (B, 4, 4, 8 df_dim)."""
    if images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f'This discriminator takes (B, {self.image_size}, '
                       f'{self.image_size}, 3) images; got {images.shape}.')
    return self.encode_img(images, train=train)

  def cond_head(self, code: jax.Array, condition: jax.Array, *,
                train: bool = False) -> jax.Array:
    if condition.shape != (code.shape[0], self.condition_dim):
      raise ValueError(f'condition must be ({code.shape[0]}, '
                       f'{self.condition_dim}); got {condition.shape}.')
    return self.get_cond_logits(code, condition, train=train)

  def uncond_head(self, code: jax.Array) -> jax.Array:
    if not self.use_uncond:
      raise ValueError('This discriminator has no unconditional head.')
    return self.get_uncond_logits(code)

  def __call__(self, images: jax.Array, condition: jax.Array, *,
               train: bool = False) -> dict:
    """Returns {'code', 'cond': (B,) logits, 'uncond': (B,) if use_uncond}."""
    code = self.encode(images, train=train)
    out = {'code': code, 'cond': self.cond_head(code, condition, train=train)}
    if self.use_uncond:
      out['uncond'] = self.uncond_head(code)
    return out
