"""Convolutions computed in cheaper, equal forms (XLA:CPU fast paths).

Written for DF-GAN (t2ijax/models/dfgan.py), whose train step differentiates
D twice (MA-GP) and upsamples before every 3x3 conv of G; the up-blocks of the
AttnGAN family (`layers.UpBlock`) use `upsample_conv3x3` too. Each equals the
plain form up to float rounding (tested in tests/test_dfgan.py against torch):
  * `upsample_conv3x3`: conv3x3 after nearest 2x upsampling as four 2x2
    convolutions at the low resolution, one per output phase (16 instead of
    36 multiply-adds per pixel pair of channels);
  * `conv4x4_stride2`: torch's Conv2d(k=4, s=2, p=1), differentiated through
    a space-to-depth form: XLA:CPU runs the kernel gradient of a strided
    conv's input gradient on a slow path (~10x the rest of that conv's work);
  * `conv_valid`: a stride-1 VALID conv whose derivatives of any order stay
    unpadded, undilated stride-1 convolutions.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.nn import torch_compat


def _phase_kernels(kernel: jax.Array) -> jax.Array:
  """(3, 3, I, O) -> (2, 2, I, 4 O): the 2x2 kernel of each output phase (a, b).

  After nearest 2x upsampling, output row 2i + a reads upsampled rows
  2i + a - 1 .. 2i + a + 1, i.e. low rows (i - 1, i) with taps (k0, k1 + k2)
  for a = 0 and rows (i, i + 1) with taps (k0 + k1, k2) for a = 1; columns
  likewise. Output channels are ordered (a, b, O).
  """
  def split(k, axis):
    k0, k1, k2 = (jnp.take(k, i, axis=axis) for i in range(3))
    return (jnp.stack([k0, k1 + k2], axis=axis), jnp.stack([k0 + k1, k2], axis=axis))

  return jnp.concatenate([p for rows in split(kernel, 0) for p in split(rows, 1)], axis=-1)


def upsample_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv3x3 (padding 1) of nearest-2x-upsampled x, computed at x's resolution.

  Each output phase (a, b) (row parity, column parity) is a 2x2 convolution
  of x whose taps are sums of the 3x3 taps; one convolution with 4x the
  output channels computes all four, and the phases are interleaved.

  Args:
    x: (B, H, W, I).
    kernel: (3, 3, I, O) HWIO.

  Returns:
    (B, 2H, 2W, O), equal to conv3x3(upsample_nearest_2x(x)) without bias.
  """
  batch, height, width, _ = x.shape
  out = kernel.shape[-1]
  phases = _phase_kernels(kernel)
  # Padded explicitly: XLA:CPU's kernel gradient of a 2x2 conv with padding 1
  # takes a slow path (~40x here); of a VALID one, the fast one.
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = torch_compat.conv_nhwc(x, phases, 1, 0)          # (B, H + 1, W + 1, 4 O)
  y = y.reshape(batch, height + 1, width + 1, 2, 2, out)
  # Phase a of low row i sits at conv row i + a.
  parts = [[y[:, a:a + height, b:b + width, a, b] for b in range(2)] for a in range(2)]
  y = jnp.stack([jnp.stack(p, axis=3) for p in parts], axis=2)   # (B, H, 2, W, 2, O)
  return y.reshape(batch, 2 * height, 2 * width, out)


_NHWC = ('NHWC', 'HWIO', 'NHWC')
# The kernel gradient as a convolution: x's channels play the batch, and the
# batch is contracted (the layout of jax's own first-order kernel gradient).
_KERNEL_GRAD = ('CHWN', 'IHWO', 'HWNC')


def _pad_full(g: jax.Array, kh: int, kw: int) -> jax.Array:
  return jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))


def _flip_transpose(kernel: jax.Array) -> jax.Array:
  """The kernel that maps an output gradient back to the input (full conv)."""
  return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


@jax.custom_vjp
def conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 VALID conv of NHWC x with an HWIO kernel, closed under differentiation.

  Its gradients are again `conv_valid` (input) and `_kernel_grad` (kernel),
  whose gradients are these two again, so derivatives of any order stay
  unpadded, undilated stride-1 convolutions (XLA:CPU's fast paths).
  """
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=_NHWC)


def _conv_valid_fwd(x, kernel):
  return conv_valid(x, kernel), (x, kernel)


def _conv_valid_bwd(residuals, g):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  return conv_valid(_pad_full(g, kh, kw), _flip_transpose(kernel)), _kernel_grad(x, g)


conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)


@jax.custom_vjp
def _kernel_grad(x: jax.Array, g: jax.Array) -> jax.Array:
  """d sum(g * conv_valid(x, k)) / dk, shape (kh, kw, I, O)."""
  return jax.lax.conv_general_dilated(x, g, (1, 1), 'VALID', dimension_numbers=_KERNEL_GRAD)


def _kernel_grad_fwd(x, g):
  return _kernel_grad(x, g), (x, g)


def _kernel_grad_bwd(residuals, c):
  x, g = residuals
  kh, kw = c.shape[:2]
  return conv_valid(_pad_full(g, kh, kw), _flip_transpose(c)), conv_valid(x, c)


_kernel_grad.defvjp(_kernel_grad_fwd, _kernel_grad_bwd)


def _space_to_depth_conv4x4_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv4x4 stride 2 padding 1 as a 2x2 stride-1 conv of 2x2 pixel blocks."""
  b, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  x = x.reshape(b, h // 2 + 1, 2, w // 2 + 1, 2, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, h // 2 + 1, w // 2 + 1, 4 * c)
  # Tap (2p + r, 2q + s) of the 4x4 kernel -> tap (p, q), channel (r, s, c).
  kernel = kernel.reshape(2, 2, 2, 2, c, -1).transpose(0, 2, 1, 3, 4, 5)
  return conv_valid(x, kernel.reshape(2, 2, 4 * c, -1))


@jax.custom_vjp
def conv4x4_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """torch Conv2d(k=4, s=2, p=1) without bias; gradients via space-to-depth.

  The forward is XLA's strided conv (fastest); the gradient is that of the
  equal space-to-depth form, so a second derivative (MA-GP) stays fast.
  """
  return torch_compat.conv_nhwc(x, kernel, 2, 1)


def _conv4x4_stride2_fwd(x, kernel):
  return conv4x4_stride2(x, kernel), (x, kernel)


def _conv4x4_stride2_bwd(residuals, g):
  return jax.vjp(_space_to_depth_conv4x4_stride2, *residuals)[1](g)


conv4x4_stride2.defvjp(_conv4x4_stride2_fwd, _conv4x4_stride2_bwd)


class Conv4x4Stride2(nn.Module):
  """torch Conv2d(in, out, 4, 2, 1, bias=False): param `kernel` (4, 4, I, O)."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[1] % 2 or x.shape[2] % 2:
      raise ValueError(f'Conv4x4Stride2 needs even H and W; got {x.shape}.')
    kernel = self.param('kernel', torch_compat.torch_kernel_init(),
                        (4, 4, x.shape[-1], self.features))
    return conv4x4_stride2(x, kernel)


class UpsampleConv3x3(nn.Module):
  """torch Conv2d(in, out, 3, 1, 1) applied after nearest 2x upsampling.

  Same params as `layers.Conv2d` (kernel (3, 3, I, O), bias if use_bias).

  Attributes:
    features: output channels.
    use_bias: add a bias (torch's default init for this fan-in).
    kernel_init: the kernel's initialiser (torch's default by default).
  """
  features: int
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = torch_compat.torch_kernel_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = 9 * x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (3, 3, x.shape[-1], self.features))
    y = upsample_conv3x3(x, kernel)
    if self.use_bias:
      y = y + self.param('bias', torch_compat.torch_bias_init(fan_in), (self.features,))
    return y
