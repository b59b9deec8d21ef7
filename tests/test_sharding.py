"""A sharded train step equals the single-device step (8 fake CPU devices)."""

import jax
import numpy as np
import pytest

from t2ijax import parallel
from t2ijax.trainers import loop


def _train(config, workdir, devices, num_steps=2):
  setup = loop.Setup(config, str(workdir), devices)
  state, _ = setup.init_or_restore()
  step = setup.jit_train_step()
  with jax.set_mesh(setup.mesh):
    for local in setup.train_batches(0, num_steps):
      state, metrics = step(state, parallel.global_batch(local, setup.mesh))
  return jax.device_get(state.nets), jax.device_get(metrics), setup.mesh


@pytest.mark.parametrize("mesh_shape", [(8, 1), (4, 2)])
def test_sharded_step_matches_single_device(tiny_damsm, tmp_path, mesh_shape):
  assert jax.device_count() == 8
  single, single_metrics, _ = _train(tiny_damsm, tmp_path / "single", jax.devices()[:1])
  tiny_damsm.mesh.shape = mesh_shape
  sharded, sharded_metrics, mesh = _train(tiny_damsm, tmp_path / "sharded", jax.devices())
  assert dict(mesh.shape) == {"data": mesh_shape[0], "model": mesh_shape[1]}
  np.testing.assert_allclose(sharded_metrics["loss"], single_metrics["loss"], rtol=1e-5)
  flat_single = jax.tree_util.tree_leaves_with_path(single)
  flat_sharded = jax.tree.leaves(sharded)
  assert len(flat_single) == len(flat_sharded) > 10
  for (path, a), b in zip(flat_single, flat_sharded):
    # Sums over the batch are reduced in another order across devices.
    scale = float(np.abs(a).max()) if np.size(a) else 0.0
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale + 1e-7,
                               err_msg=jax.tree_util.keystr(path))
  # The step really changed the parameters (so equality is not vacuous).
  init = loop.Setup(tiny_damsm, str(tmp_path / "init"), jax.devices())
  fresh = jax.device_get(jax.jit(init.method.init_state)(init.rng).nets)
  moved = [not np.allclose(a, b) for a, b in
           zip(jax.tree.leaves(fresh["text"].params), jax.tree.leaves(single["text"].params))]
  assert all(moved)


def test_batch_must_divide_data_axis(tiny_damsm, tmp_path):
  tiny_damsm.train.batch_size = 12
  from t2ijax import errors
  with pytest.raises(errors.ConfigError, match="divisible by the data-parallel size 8"):
    loop.Setup(tiny_damsm, str(tmp_path), jax.devices())
