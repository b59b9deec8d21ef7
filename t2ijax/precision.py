"""Mixed precision by casting at the network boundary (config.precision.compute_dtype).

Parameters, optimizer states, EMA and batch statistics stay float32 in the
train state. For a network call in bfloat16, its floating parameters and
inputs are cast to bfloat16 on the way in: Flax layers built without an
explicit dtype then compute in the dtype of what they are given (their
matmuls and convolutions run in bfloat16 on TPU / GPU tensor cores), while
BatchNorm still reduces its statistics in float32. Outputs are cast back to
float32 so losses, and therefore gradients, are summed in float32; the
gradient of a cast is a cast, so the float32 parameters receive float32
gradients. Updated variable collections (BatchNorm statistics, spectral-norm
vectors) are returned in the dtype they came in, so the state's dtypes never
drift.
"""

from typing import Any

import jax
import jax.numpy as jnp

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def config_dtype(config) -> str:
  """config.precision.compute_dtype, or 'float32' for configs without it."""
  return config.precision.compute_dtype if 'precision' in config else 'float32'


def cast_floating(tree: Any, dtype) -> Any:
  """Every floating array leaf of `tree` as `dtype` (integers, bools, keys kept)."""
  def cast(x):
    if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.floating):
      return jnp.asarray(x, dtype)
    return x
  return jax.tree.map(cast, tree)


def _like(new: Any, old: Any) -> Any:
  """`new` with each leaf in the dtype of the matching leaf of `old`."""
  return jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)


def apply(module, variables, *args, compute_dtype: str = 'float32', method=None,
          mutable=False, **kwargs):
  """`module.apply` computing in `compute_dtype`; float32 outputs.

  Returns what `module.apply` returns: the output, or (output, updated
  collections) when `mutable` is given; collections keep their dtypes.
  """
  if compute_dtype == 'float32':
    return module.apply(variables, *args, method=method, mutable=mutable, **kwargs)
  dtype = DTYPES[compute_dtype]
  low = dict(variables, params=cast_floating(variables['params'], dtype))
  result = module.apply(low, *cast_floating(args, dtype), method=method,
                        mutable=mutable, **cast_floating(kwargs, dtype))
  if not mutable:
    return cast_floating(result, jnp.float32)
  out, collections = result
  return (cast_floating(out, jnp.float32),
          _like(collections, {k: variables[k] for k in collections}))
