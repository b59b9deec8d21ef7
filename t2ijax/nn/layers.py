"""Building blocks of the StackGAN++ / AttnGAN / DM-GAN / MirrorGAN family.

All layouts are NHWC; the official code is NCHW, so a channel split or concat
on torch axis 1 is on the last axis here.

Initialisation follows the family's `weights_init`: conv and linear kernels
orthogonal (gain 1), linear biases 0, BatchNorm scale N(1, 0.02) and bias 0.
Conv biases, which that function leaves alone, keep torch's default
U(+-1/sqrt(fan_in)). Every initialiser can be overridden per layer.

Parameter names mirror the torch modules with their `nn.Sequential` indices
replaced by what the layer is (the converter maps one onto the other):
  UpBlock          `.1` conv, `.2` BN          -> conv, bn
  ResBlock         `block.{0,1,3,4}`            -> conv1, bn1, conv2, bn2
  ConvNormLeakyReLU `.0` conv (or `.0.module`), `.1` BN -> conv, bn
  ConditioningAugmentation `fc`                 -> fc
"""

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.nn import batch_norm as batch_norm_lib
from t2ijax.nn import fast_conv
from t2ijax.nn import spectral_norm
from t2ijax.nn.torch_compat import conv_nhwc, torch_bias_init  # noqa: F401  (re-exported)

# torch BatchNorm{1,2}d(eps=1e-5, momentum=0.1): flax weights the old value.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# Negative slope of every LeakyReLU in the family's discriminators.
LEAKY_SLOPE = 0.2

Initializer = Callable[..., jax.Array]


def orthogonal_init() -> Initializer:
  """torch.nn.init.orthogonal_ (gain 1) on a flax kernel.

  A flax kernel is (..., in, out) and torch's weight (out, in, ...): with the
  output axis as columns the flax matrix is the transpose of torch's (up to
  the order of the fan-in entries), which is orthogonal exactly when torch's
  is.
  """
  return nn.initializers.orthogonal(scale=1.0, column_axis=-1)


def bn_scale_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """N(1, 0.02), the family's BatchNorm weight init."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def glu(x: jax.Array, axis: int = -1) -> jax.Array:
  """Gated linear unit: first half of `axis` times sigmoid of the second."""
  if x.shape[axis] % 2:
    raise ValueError(f'GLU needs an even number of channels; got {x.shape}.')
  value, gate = jnp.split(x, 2, axis=axis)
  return value * jax.nn.sigmoid(gate)


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """nn.Upsample(scale_factor=2, mode='nearest') on NHWC: repeat each pixel."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def batch_norm(train: bool, *, name: str,
               scale_init: Initializer = bn_scale_init) -> batch_norm_lib.BatchNorm:
  """BatchNorm with torch's defaults (eps 1e-5, momentum 0.1) on the last axis.

  Args:
    train: normalise with batch statistics and update the running averages
      (apply with mutable=['batch_stats']); False uses the running averages.
    name: submodule name.
    scale_init: initialiser of the scale (torch `weight`).
  """
  return batch_norm_lib.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                  epsilon=BN_EPSILON, scale_init=scale_init, name=name)


class Conv2d(nn.Module):
  """torch.nn.Conv2d on NHWC with torch's symmetric integer padding.

  Written out (rather than flax's Conv) so the bias default can be torch's,
  which depends on the fan-in only known at call time. Params: `kernel`
  (kh, kw, in, out) = torch weight.permute(2, 3, 1, 0); `bias` (out,).

  Attributes:
    features: output channels.
    kernel_size: square kernel side.
    strides: stride on H and W.
    padding: zeros added on each side of H and W (torch `padding`).
    use_bias: whether to add a bias.
    kernel_init: kernel initialiser (orthogonal by default).
    bias_init: bias initialiser; None: torch's default for this fan-in.
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_bias: bool = False
  kernel_init: Initializer = orthogonal_init()
  bias_init: Optional[Initializer] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    kernel = self.param(
        'kernel', self.kernel_init,
        (self.kernel_size, self.kernel_size, in_features, self.features))
    y = conv_nhwc(x, kernel, self.strides, self.padding)
    if self.use_bias:
      fan_in = in_features * self.kernel_size**2
      bias = self.param('bias', self.bias_init or torch_bias_init(fan_in),
                        (self.features,))
      y = y + bias
    return y


def conv2d(features: int, kernel_size: int, *, strides: int = 1,
           padding: int = 0, use_bias: bool = False,
           use_spectral_norm: bool = False, name: str) -> nn.Module:
  """A plain or spectral-normalised Conv2d with the same parameter names."""
  if use_spectral_norm:
    return spectral_norm.SpectralConv2d(
        features, kernel_size, strides=strides, padding=padding,
        use_bias=use_bias, kernel_init=orthogonal_init(), name=name)
  return Conv2d(features, kernel_size, strides=strides, padding=padding,
                use_bias=use_bias, name=name)


def conv3x3(features: int, *, use_bias: bool = False, name: str) -> Conv2d:
  """3x3, stride 1, padding 1 (size preserving); no bias, as officially."""
  return Conv2d(features, 3, padding=1, use_bias=use_bias, name=name)


class UpBlock(nn.Module):
  """upBlock: nearest 2x -> conv3x3 (2*features, no bias) -> BN -> GLU.

  The upsampling and the conv run as one `fast_conv.upsample_conv3x3` at the
  low resolution (16 instead of 36 multiply-adds per output pixel and channel
  pair; equal up to float rounding; the same `conv/kernel`).

  Attributes:
    features: output channels (the conv makes twice as many for the GLU).
  """
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = fast_conv.UpsampleConv3x3(2 * self.features, use_bias=False,
                                  kernel_init=orthogonal_init(), name='conv')(x)
    x = batch_norm(train, name='bn')(x)
    return glu(x)


class ResBlock(nn.Module):
  """x + BN(conv3x3(GLU(BN(conv3x3(x, 2C))), C)); nothing after the sum."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    channels = x.shape[-1]
    y = conv3x3(2 * channels, name='conv1')(x)
    y = glu(batch_norm(train, name='bn1')(y))
    y = conv3x3(channels, name='conv2')(y)
    y = batch_norm(train, name='bn2')(y)
    return x + y


class ConvNormLeakyReLU(nn.Module):
  """Conv -> [BatchNorm] -> LeakyReLU(0.2): the discriminators' block.

  With kernel 4, stride 2, padding 1 this is `downBlock` (halves H and W);
  with kernel 3, stride 1, padding 1 it is `Block3x3_leakRelu`. DM-GAN's
  variant spectral-normalises the conv, gives it a bias and drops the BN.

  Attributes:
    features: output channels.
    kernel_size, strides, padding: as torch's Conv2d.
    use_batch_norm: BN between conv and activation.
    use_spectral_norm: spectral-normalised conv (see `spectral_norm`).
    use_bias: conv bias; None: only when there is no BN.
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_batch_norm: bool = True
  use_spectral_norm: bool = False
  use_bias: Optional[bool] = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    use_bias = (not self.use_batch_norm if self.use_bias is None
                else self.use_bias)
    x = conv2d(self.features, self.kernel_size, strides=self.strides,
               padding=self.padding, use_bias=use_bias,
               use_spectral_norm=self.use_spectral_norm, name='conv')(x)
    if self.use_batch_norm:
      x = batch_norm(train, name='bn')(x)
    return nn.leaky_relu(x, LEAKY_SLOPE)


class ConditioningAugmentation(nn.Module):
  """CA_NET: a Gaussian condition code from a text embedding.

  fc (Dense with bias) -> activation -> split into mu and logvar, then
  c = mu + exp(logvar / 2) * eps with eps ~ N(0, 1) (drawn at test time too).

  Activations (each from an official code base):
    'glu'        StackGAN++ / AttnGAN / DM-GAN / MirrorGAN: Dense to
                 4 * condition_dim, GLU to 2 * condition_dim.
    'relu'       StackGAN PyTorch: Dense to 2 * condition_dim, ReLU.
    'leaky_relu' StackGAN TF: Dense to 2 * condition_dim, LeakyReLU(0.2)
                 (TF also reads the second half as log sigma and draws
                 truncated noise; pass such noise via `noise` and adapt).

  Attributes:
    condition_dim: size of c (ncf; 100 in AttnGAN).
    activation: 'glu', 'relu' or 'leaky_relu'.
  """
  condition_dim: int = 100
  activation: str = 'glu'

  @nn.compact
  def __call__(
      self, embedding: jax.Array, key: Optional[jax.Array] = None,
      noise: Optional[jax.Array] = None
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Samples the condition.

    Args:
      embedding: (B, D) text embedding (the DAMSM sentence, D = nef).
      key: PRNG key for eps; exactly one of key and noise.
      noise: (B, condition_dim) eps itself (e.g. to match a torch run).

    Returns:
      c, mu, logvar, each (B, condition_dim).
    """
    if (key is None) == (noise is None):
      raise ValueError('Pass exactly one of key and noise to the conditioning '
                       'augmentation.')
    if self.activation == 'glu':
      width, activate = 4 * self.condition_dim, glu
    elif self.activation == 'relu':
      width, activate = 2 * self.condition_dim, nn.relu
    elif self.activation == 'leaky_relu':
      width = 2 * self.condition_dim
      activate = lambda x: nn.leaky_relu(x, LEAKY_SLOPE)
    else:
      raise ValueError(f'Unknown CA activation {self.activation!r}; use glu, '
                       'relu or leaky_relu.')
    x = nn.Dense(width, kernel_init=orthogonal_init(),
                 bias_init=nn.initializers.zeros, name='fc')(embedding)
    mu, logvar = jnp.split(activate(x), 2, axis=-1)
    if noise is None:
      noise = jax.random.normal(key, mu.shape, mu.dtype)
    elif noise.shape != mu.shape:
      raise ValueError(f'CA noise must be {mu.shape}; got {noise.shape}.')
    c = mu + jnp.exp(0.5 * logvar) * noise
    return c, mu, logvar
