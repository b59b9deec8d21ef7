"""flax.linen.BatchNorm with its batch statistics summed by matrix products.

Same variables, initialisation, arithmetic and dtypes as
`nn.BatchNorm(axis=-1, use_fast_variance=True)` (statistics in at least
float32, var = E[x^2] - E[x]^2 clipped at 0, running averages not updated
while initialising); only how the two batch means are summed differs.

Why: XLA:CPU rewrites a large reduction into a reduce-window tree that runs
at ~3 GB/s; the DM-GAN demo step spent ~10% of its time there. A
(1, N) x (N, C) product of the same sums runs at memory speed. It is used on
the CPU backend only, at full float32 precision: TPUs and GPUs reduce well
and would run a default-precision float32 matmul in bfloat16 / TF32.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Initializer = nn.initializers.Initializer


def batch_moments(x: jax.Array, as_matmul: bool | None = None) -> tuple[jax.Array, jax.Array]:
  """Mean and (fast, clipped) variance of x over every axis but the last, in >= float32.

  as_matmul: sum by a matrix product (None: on the CPU backend only).
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if as_matmul is None:
    as_matmul = jax.default_backend() == 'cpu'
  if not as_matmul:
    axes = tuple(range(x.ndim - 1))
    mean, mean2 = x.mean(axes), (x * x).mean(axes)
  else:
    flat = x.reshape(-1, x.shape[-1])
    weights = jnp.full((flat.shape[0],), 1.0 / flat.shape[0], flat.dtype)
    dot = lambda a: jnp.dot(weights, a, precision=lax.Precision.HIGHEST)
    mean, mean2 = dot(flat), dot(flat * flat)
  return mean, jnp.maximum(0.0, mean2 - mean * mean)


class BatchNorm(nn.Module):
  """BatchNorm over the last axis; variables batch_stats/{mean,var}, params {scale,bias}.

  Attributes:
    use_running_average: normalise with the running averages (eval) instead
      of the batch statistics (train; apply with mutable=['batch_stats']).
    momentum: weight of the old running average (flax's convention).
    epsilon: added to the variance.
    scale_init: initialiser of the scale (the bias starts at 0).
  """
  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  scale_init: Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), shape)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), shape)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var = batch_moments(x)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    # flax's order of operations and result dtype, so outputs match it bit for bit.
    scale = self.param('scale', self.scale_init, shape, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, shape, jnp.float32)
    y = x - mean
    mul = lax.rsqrt(var + self.epsilon) * scale
    y = y * mul + bias
    return jnp.asarray(y, jnp.result_type(x, scale, bias))
