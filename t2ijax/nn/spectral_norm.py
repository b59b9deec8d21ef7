"""Spectral normalisation with one power iteration per call (DM-GAN's D).

The layer keeps its raw kernel W as a parameter and divides it by an estimate
of its largest singular value before use. With W viewed as a matrix of shape
(out, fan_in) and a stored unit vector u of size `out`, each call does one
power-iteration step

  v = l2n(W^T u),   u' = l2n(W v),   sigma = u' . (W v),   W_eff = W / sigma

where l2n(x) = x / (||x|| + 1e-12). u and v are constants to the gradient
(the official code updates them through `.data`); sigma still depends on W.
v is recomputed from u before every use, so only u is state.

State: u lives in the 'spectral' variable collection (not 'params', so the
optimizer never sees it and parameter counts exclude it). It is drawn from
N(0, 1) and normalised at init; init itself does not advance it, as building
the torch module does not.

How to run it:
  * Train: `apply(variables, ..., mutable=['spectral'])` (plus 'batch_stats'
    where the model has BN) and keep the returned 'spectral' for the next
    step. Each call of a layer advances its u once, as in the official code,
    where D's trunk runs three times per stage and iteration.
  * Eval: `apply(variables, ...)` without making 'spectral' mutable. The
    output is exactly that of a training call with the same u (the power step
    still runs, from the stored u); only the stored u does not move. The
    official code also advanced u in eval mode; make 'spectral' mutable to
    reproduce that drift.

Converting a torch `SpectralNorm(Conv2d)`: `module.weight_bar` (O, I, kh, kw)
-> `kernel` (kh, kw, I, O); `module.bias` -> `bias`; `module.weight_u` ->
spectral `u`. `module.weight_v` is not needed (overwritten before use).
"""

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.nn import torch_compat

SPECTRAL_COLLECTION = 'spectral'
# Added to the norm (not its square), as in the official l2normalize.
L2_EPSILON = 1e-12

Initializer = Callable[..., jax.Array]


def l2_normalize(x: jax.Array, eps: float = L2_EPSILON) -> jax.Array:
  """x / (||x|| + eps)."""
  return x / (jnp.sqrt(jnp.sum(x * x)) + eps)


def power_iteration(matrix: jax.Array, u: jax.Array,
                    eps: float = L2_EPSILON) -> tuple[jax.Array, jax.Array]:
  """One power-iteration step on `matrix` laid out (fan_in, out).

  The flax kernel is the transpose of torch's (out, fan_in) weight, hence
  W v = v @ matrix and W^T u = matrix @ u.

  Args:
    matrix: (fan_in, out) kernel, gradients flow into sigma through it.
    u: (out,) the stored left singular vector estimate.
    eps: the l2-normalisation epsilon.

  Returns:
    sigma (scalar) and the new u, which carries no gradient.
  """
  u = jax.lax.stop_gradient(u)
  frozen = jax.lax.stop_gradient(matrix)
  v = l2_normalize(frozen @ u, eps)
  new_u = l2_normalize(v @ frozen, eps)
  sigma = jnp.dot(new_u, v @ matrix)
  return sigma, new_u


def _initial_u(key: jax.Array, size: int) -> jax.Array:
  return l2_normalize(jax.random.normal(key, (size,)))


def normalize_kernel(module: nn.Module, kernel: jax.Array,
                     eps: float = L2_EPSILON) -> jax.Array:
  """kernel / sigma for a layer `module`, which owns u (call it from compact).

  u is advanced only when the 'spectral' collection is mutable and the call
  is not the init.
  """
  out_features = kernel.shape[-1]
  initializing = module.is_initializing()
  u = module.variable(SPECTRAL_COLLECTION, 'u', _initial_u,
                      module.make_rng('params') if initializing else None,
                      out_features)
  sigma, new_u = power_iteration(kernel.reshape(-1, out_features), u.value,
                                 eps)
  if module.is_mutable_collection(SPECTRAL_COLLECTION) and not initializing:
    u.value = new_u
  return kernel / sigma


class SpectralConv2d(nn.Module):
  """Spectral-normalised torch-style Conv2d on NHWC.

  Params `kernel` (kh, kw, in, out) (the raw W, torch `weight_bar`) and
  `bias`; state `u` (out,) in the 'spectral' collection.

  Attributes:
    features: output channels.
    kernel_size: square kernel side.
    strides: stride on H and W.
    padding: zeros added on each side of H and W (torch `padding`).
    use_bias: whether to add a bias (True in DM-GAN's D).
    kernel_init: initialiser of the raw kernel (orthogonal by default).
    bias_init: None: torch's default U(+-1/sqrt(fan_in)).
    eps: the l2-normalisation epsilon.
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.orthogonal(column_axis=-1)
  bias_init: Optional[Initializer] = None
  eps: float = L2_EPSILON

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    kernel = self.param(
        'kernel', self.kernel_init,
        (self.kernel_size, self.kernel_size, in_features, self.features))
    kernel = normalize_kernel(self, kernel, self.eps)
    y = torch_compat.conv_nhwc(x, kernel, self.strides, self.padding)
    if self.use_bias:
      fan_in = in_features * self.kernel_size**2
      y = y + self.param('bias', self.bias_init or torch_compat.torch_bias_init(fan_in),
                         (self.features,))
    return y


class SpectralDense(nn.Module):
  """Spectral-normalised Dense (torch Linear, or Conv1d with kernel 1).

  Params `kernel` (in, out) and `bias`; state `u` (out,).

  Attributes:
    features: output size.
    use_bias: whether to add a bias.
    kernel_init: orthogonal by default.
    bias_init: None: torch's default U(+-1/sqrt(fan_in)).
    eps: the l2-normalisation epsilon.
  """
  features: int
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.orthogonal(column_axis=-1)
  bias_init: Optional[Initializer] = None
  eps: float = L2_EPSILON

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init,
                        (in_features, self.features))
    # In x's dtype: the normalised kernel is float32 under bfloat16 compute.
    y = x @ normalize_kernel(self, kernel, self.eps).astype(x.dtype)
    if self.use_bias:
      bias_init = self.bias_init or torch_compat.torch_bias_init(in_features)
      y = y + self.param('bias', bias_init, (self.features,))
    return y
