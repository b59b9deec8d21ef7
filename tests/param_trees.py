"""Parameter-tree helpers the model tests share: counts, shapes, cheap keys."""

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np


def key(seed: int) -> jax.Array:
  # 'rbg' keys compile much faster than threefry on XLA:CPU.
  return jax.random.key(seed, impl='rbg')


def count(tree) -> int:
  """Number of scalars in all leaves (parameters) of `tree`."""
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def flat_shapes(tree) -> dict:
  """{'a/b/kernel': shape} of a nested parameter dict."""
  return {path: tuple(x.shape) for path, x in
          flax.traverse_util.flatten_dict(tree, sep='/').items()}


def from_torch(abstract_variables, state_dict, torch_key: Callable[[tuple], str]):
  """Flax variables from a torch state dict; every torch tensor must be used.

  torch_key maps a Flax path (without the collection) to its torch key; conv
  kernels go OIHW -> HWIO and Linear weights are transposed.
  """
  flat = flax.traverse_util.flatten_dict(abstract_variables)
  used, out = set(), {}
  for (collection, *path), leaf in flat.items():
    key = torch_key(tuple(path))
    tensor = state_dict[key].detach().numpy()
    used.add(key)
    if path[-1] == 'kernel':
      tensor = tensor.transpose(2, 3, 1, 0) if tensor.ndim == 4 else tensor.T
    assert tensor.shape == leaf.shape, key
    out[(collection, *path)] = jnp.asarray(tensor)
  left = {k for k in state_dict if not k.endswith('num_batches_tracked')} - used
  assert not left, left
  return flax.traverse_util.unflatten_dict(out)


def save_random_run(method, config, vocab, workdir: str, scale: float, seed: int = 0) -> None:
  """A finished run (checkpoint of step 1, config, vocabulary) of `method`'s
  state filled with random weights, without compiling its init: N(0, scale)
  floats, ones for BatchNorm running variances, zeros for integers."""
  from t2ijax import checkpoint as ckpt_lib
  from t2ijax.trainers import loop
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      return jnp.zeros(leaf.shape, leaf.dtype)
    if path[-1].key == 'var':                # BatchNorm running variances
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(scale * rng.normal(size=leaf.shape), leaf.dtype)

  state = jax.tree_util.tree_map_with_path(
      fill, jax.eval_shape(method.init_state, jax.random.key(0)))
  loop.write_config(config, workdir, vocab)
  checkpointer = ckpt_lib.Checkpointer(workdir, use_async=False)
  checkpointer.save(1, state, {'next_step': 1, 'seed': 0}, config)
  checkpointer.close()
