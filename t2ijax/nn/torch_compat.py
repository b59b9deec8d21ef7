"""PyTorch conventions the ported layers share: default bias init, conv padding."""

import math
from typing import Callable

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def torch_bias_init(fan_in: int) -> Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch's default Conv/Linear bias."""
  limit = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


def conv_nhwc(x: jax.Array, kernel: jax.Array, strides: int,
              padding: int) -> jax.Array:
  """Cross-correlation of NHWC x with an HWIO kernel, torch-style padding.

  Computes in x's dtype (a spectral-normalised kernel is float32 even when
  the network runs in bfloat16, t2ijax/precision.py).
  """
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=(strides, strides),
      padding=((padding, padding), (padding, padding)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def torch_kernel_init() -> Initializer:
  """torch's default Conv/Linear weight init (kaiming_uniform, a=sqrt(5)).

  That is U(+-1/sqrt(fan_in)): variance 1/(3 fan_in). Flax kernels are
  (..., in, out), so fan_in is the product of all but the last axis, as
  variance_scaling computes it.
  """
  return jax.nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
