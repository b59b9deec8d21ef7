"""Parameter-tree helpers the model tests share: counts, shapes, cheap keys."""

import flax
import jax
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
