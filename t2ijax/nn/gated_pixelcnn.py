"""Shifted (masked) convolutions and the gated layer of the Gated PixelCNN.

van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders";
reference/pixelcnn_metrics.md A2-A4. Masked n x n convolutions are written as
shifted ones, which cost no wasted taps:
  vertical   ceil(n/2) x n kernel on the input padded (top ceil(n/2)-1, left and
             right n//2): output row i sees input rows <= i;
  horizontal 1 x ceil(n/2) kernel padded (left ceil(n/2)-1): output column j sees
             columns <= j of its own row.
Only the tap at the current position carries a channel mask (R -> G -> B within a
pixel): mask A (first layer) lets output group g see input groups < g, mask B
groups <= g. The vertical stack sees the current row; its link into the
horizontal stack is shifted down one row, so the horizontal stack only ever
receives strictly earlier rows from it.

Channel groups: a feature axis of C maps is split into three contiguous groups
(R, G, B) of C/3 ('contiguous'; the 3 image channels are the case C = 3); the
2p pre-activations of a gate are [f_R f_G f_B | g_R g_G g_B] ('gate'), so the
tanh and sigmoid halves of a group multiply each other.

Masks are multiplied into kernels at apply time, so training cannot reopen a
masked tap. The functions here are pure, so the cached sampler
(t2ijax/trainers/pixelcnn_sampling.py) computes exactly the same masked kernels
from the same parameters.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_DIMS = ('NHWC', 'HWIO', 'NHWC')


def group_ids(size: int, layout: str) -> np.ndarray:
  """The colour group (0 R, 1 G, 2 B) of each of `size` maps."""
  if layout == 'contiguous':
    if size % 3:
      raise ValueError(f'{size} maps cannot be split into 3 colour groups')
    return np.arange(size) * 3 // size
  if layout == 'gate':
    if size % 6:
      raise ValueError(f'{size} gate maps cannot be split into 2 x 3 colour groups')
    half = size // 2
    return (np.arange(size) % half) * 3 // half
  raise ValueError(f'unknown channel layout {layout!r}')


def channel_mask(in_size: int, out_size: int, mask_type: str,
                 in_layout: str = 'contiguous', out_layout: str = 'contiguous') -> np.ndarray:
  """(in_size, out_size) 0/1 mask of the current-position tap; 'A' strict, 'B' not."""
  gi = group_ids(in_size, in_layout)[:, None]
  go = group_ids(out_size, out_layout)[None, :]
  if mask_type == 'A':
    return (gi < go).astype(np.float32)
  if mask_type == 'B':
    return (gi <= go).astype(np.float32)
  raise ValueError(f'unknown mask type {mask_type!r}')


def masked_kernel(kernel: jax.Array, mask_type: str | None, in_layout: str = 'contiguous',
                  out_layout: str = 'contiguous') -> jax.Array:
  """kernel (kh, kw, I, O) with its last tap (the current position) channel-masked."""
  if mask_type is None:
    return kernel
  kh, kw, cin, cout = kernel.shape
  tap = np.ones((kh, kw, cin, cout), np.float32)
  tap[kh - 1, kw - 1] = channel_mask(cin, cout, mask_type, in_layout, out_layout)
  return kernel * jnp.asarray(tap, kernel.dtype)


def conv_valid(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
  """A VALID stride-1 convolution, NHWC x HWIO (already padded input)."""
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=_DIMS)
  return y if bias is None else y + bias


def shift_pad(x: jax.Array, kernel_hw: Sequence[int], shift: str) -> jax.Array:
  """Pads NHWC x so that a VALID kh x kw conv sees only the causal past."""
  kh, kw = kernel_hw
  if shift == 'down':          # rows i-kh+1 .. i, columns centred
    if kw % 2 == 0:
      raise ValueError(f'vertical kernel width {kw} must be odd')
    pads = ((0, 0), (kh - 1, 0), (kw // 2, kw // 2), (0, 0))
  elif shift == 'down_right':  # rows i-kh+1 .. i, columns j-kw+1 .. j
    pads = ((0, 0), (kh - 1, 0), (kw - 1, 0), (0, 0))
  else:
    raise ValueError(f'unknown shift {shift!r}')
  return jnp.pad(x, pads)


def shift_down(x: jax.Array) -> jax.Array:
  """Row i of the result is row i-1 of x (row 0 is zeros)."""
  return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def gate(a: jax.Array) -> jax.Array:
  """tanh(first half) * sigmoid(second half) over the last axis."""
  f, g = jnp.split(a, 2, axis=-1)
  return jnp.tanh(f) * jax.nn.sigmoid(g)


class ShiftedConv(nn.Module):
  """A causal kh x kw convolution by padding; optional mask on the current tap."""
  features: int
  kernel_hw: tuple[int, int]
  shift: str = 'down_right'            # 'down' (vertical) | 'down_right' (horizontal)
  mask_type: str | None = None         # None | 'A' | 'B'
  in_layout: str = 'contiguous'
  out_layout: str = 'contiguous'
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_hw
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,)) if self.use_bias else None
    kernel = masked_kernel(kernel, self.mask_type, self.in_layout, self.out_layout)
    if (kh, kw) == (1, 1):
      return dense(x, kernel, bias)
    return conv_valid(shift_pad(x, self.kernel_hw, self.shift), kernel, bias)


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
  """A 1x1 convolution (kernel (1, 1, I, O) or (I, O)) over the last axis."""
  y = x @ kernel.reshape(kernel.shape[-2], kernel.shape[-1])
  return y if bias is None else y + bias


def masked_1x1(features: int, mask_type: str | None, name: str,
               in_layout: str = 'contiguous', out_layout: str = 'contiguous',
               kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
               ) -> ShiftedConv:
  return ShiftedConv(features, (1, 1), mask_type=mask_type, in_layout=in_layout,
                     out_layout=out_layout, kernel_init=kernel_init, name=name)


class GatedLayer(nn.Module):
  """One block of paper Fig. 2: (v, h) -> (v', h', skip).

  Conditioning enters both stacks' pre-activations: a global vector through a
  Dense layer (broadcast over positions) and a spatial map through an unmasked
  1x1 convolution; neither depends on the image, so neither can leak.

  With zero_init_conditioning (the default) these projections start at zero, so
  a conditional model starts as exactly its unconditional counterpart (same
  parameter paths, same initial decoder) and conditioning only enters as far as
  the likelihood's gradients pull it in; randomly initialised, they add a fixed
  random, per-example offset to every gate, which the decoder must first learn
  to ignore (a conditional model then trails the unconditional one).
  """
  features: int                 # p, divisible by 3
  kernel_size: int              # n, odd
  skip_features: int
  first: bool = False           # mask A and no residual
  zero_init_conditioning: bool = True

  @nn.compact
  def __call__(self, v, h, global_cond=None, spatial_cond=None):
    p2, n = 2 * self.features, self.kernel_size
    k2 = n // 2 + 1
    hv = ShiftedConv(p2, (k2, n), 'down', name='v_conv')(v)
    hh = ShiftedConv(p2, (1, k2), 'down_right', mask_type='A' if self.first else 'B',
                     out_layout='gate', name='h_conv')(h)
    init = (nn.initializers.zeros if self.zero_init_conditioning
            else nn.initializers.lecun_normal())
    if global_cond is not None:
      hv = hv + nn.Dense(p2, kernel_init=init, name='v_global')(global_cond)[:, None, None, :]
      hh = hh + nn.Dense(p2, use_bias=False, kernel_init=init,
                         name='h_global')(global_cond)[:, None, None, :]
    if spatial_cond is not None:
      hv = hv + masked_1x1(p2, None, 'v_spatial', kernel_init=init)(spatial_cond)
      hh = hh + masked_1x1(p2, None, 'h_spatial', kernel_init=init)(spatial_cond)
    # The link reads the vertical pre-activations one row up: strictly earlier rows.
    link = masked_1x1(p2, None, 'link')(shift_down(hv))
    gated = gate(hh + link)
    h_out = masked_1x1(self.features, 'B', 'h_out')(gated)
    if not self.first:
      h_out = h_out + h
    skip = masked_1x1(self.skip_features, 'B', 'skip')(gated)
    return gate(hv), h_out, skip
