"""Sharding rules: FSDP and a 'model' axis compute what data parallelism computes,
with less train-state memory per device (8 fake CPU devices)."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from t2ijax import config_base
from t2ijax import errors
from t2ijax import main
from t2ijax import parallel
from t2ijax import sharding_rules
from t2ijax.trainers import loop
from tests import tiny_configs

MIB = 2 ** 20


def _sharding_config(**overrides) -> ml_collections.ConfigDict:
  c = config_base.base_config('test').sharding
  c.update(overrides)
  return c


def _mesh(shape):
  return parallel.make_mesh(ml_collections.ConfigDict(
      dict(shape=shape, axes=('data', 'model'))))


def _state():
  """A state-like tree: a wide conv, a narrow conv, a bias, a scalar."""
  f32 = jnp.float32
  params = {'wide': {'kernel': jax.ShapeDtypeStruct((3, 3, 64, 512), f32)},
            'narrow': {'kernel': jax.ShapeDtypeStruct((3, 3, 16, 24), f32),
                       'bias': jax.ShapeDtypeStruct((24,), f32)}}
  return {'nets': {'G': {'params': params,
                         'opt_state': {'mu': params, 'count': jax.ShapeDtypeStruct((), jnp.int32)}}}}


def _specs(plan):
  return {leaf.path: leaf.spec for leaf in plan.leaves}


def test_data_parallel_replicates_everything():
  plan = sharding_rules.plan(_state(), _mesh((8, 1)), _sharding_config())
  assert set(_specs(plan).values()) == {P()}
  assert plan.bytes_per_device == plan.total_bytes
  assert 'strategy=data_parallel' in plan.summary()


def test_fsdp_splits_large_leaves_over_data():
  config = _sharding_config(strategy='fsdp', fsdp_min_size_mb=0.5)
  plan = sharding_rules.plan(_state(), _mesh((8, 1)), config)
  specs = _specs(plan)
  # 3*3*64*512*4 bytes = 1.1 MiB: split on its largest axis (512), in params and Adam.
  assert specs['nets/G/params/wide/kernel'] == P(None, None, None, 'data')
  assert specs['nets/G/opt_state/mu/wide/kernel'] == P(None, None, None, 'data')
  # Below the threshold: replicated.
  assert specs['nets/G/params/narrow/kernel'] == P()
  assert specs['nets/G/opt_state/count'] == P()
  wide = 3 * 3 * 64 * 512 * 4
  expected = plan.total_bytes - 2 * wide + 2 * wide / 8
  assert plan.bytes_per_device == pytest.approx(expected)
  groups = plan.by_group()
  assert groups['G/params'][1] < groups['G/params'][0]


def test_model_axis_takes_the_widest_convolutions():
  config = _sharding_config(strategy='fsdp', fsdp_min_size_mb=0.0, model_min_features=256)
  plan = sharding_rules.plan(_state(), _mesh((4, 2)), config)
  specs = _specs(plan)
  # Output channels over 'model', the next largest axis over 'data'.
  assert specs['nets/G/params/wide/kernel'] == P(None, None, 'data', 'model')
  # Narrow: 24 output features < 256, so only FSDP; 24 % 4 == 0 and 24 > 16.
  assert specs['nets/G/params/narrow/kernel'] == P(None, None, None, 'data')
  # 3 elements per shard at most: the bias is split too (threshold 0), the
  # scalar cannot be.
  assert specs['nets/G/params/narrow/bias'] == P('data')
  assert specs['nets/G/opt_state/count'] == P()


def test_explicit_rules_first_match_wins_with_logical_names():
  config = _sharding_config(
      strategy='fsdp', fsdp_min_size_mb=0.0,
      rules=(('params/narrow', 'replicate'), ('wide/kernel', 'kh,kw,cin,cout')),
      logical_axis_rules=(('cout', 'model'), ('cin', 'data'), ('kh', None), ('kw', None)))
  plan = sharding_rules.plan(_state(), _mesh((4, 2)), config)
  specs = _specs(plan)
  assert specs['nets/G/params/wide/kernel'] == P(None, None, 'data', 'model')
  assert specs['nets/G/params/narrow/kernel'] == P()
  assert specs['nets/G/params/narrow/bias'] == P()
  # The Adam moment of the narrow kernel is not under 'params/': the strategy.
  assert specs['nets/G/opt_state/mu/narrow/kernel'] == P(None, None, None, 'data')
  assert plan.by_rule()['params/narrow'][0] == 2


@pytest.mark.parametrize('rules, message', [
    ((('wide/kernel', '_,model'),), 'has 2 entries but'),
    ((('narrow/kernel', '_,_,_,cout'),), 'neither a mesh axis'),
    ((('narrow/bias', 'model,'),), 'has 2 entries'),
    ((('narrow/kernel', 'data,_,_,_'),), 'does not divide'),   # 3 % 8
    ((('wide/kernel', '_,_,data,data'),), 'twice'),
    ((('([', 'fsdp'),), 'not a valid regex'),
    ((('wide',),), 'not a \\(regex, spec\\) pair'),
])
def test_bad_rules_raise_clear_errors(rules, message):
  config = _sharding_config(rules=rules)
  with pytest.raises(errors.ConfigError, match=message):
    sharding_rules.plan(_state(), _mesh((8, 1)), config)


def test_unknown_strategy():
  with pytest.raises(errors.ConfigError, match="'data_parallel' or 'fsdp'"):
    sharding_rules.plan(_state(), _mesh((8, 1)), _sharding_config(strategy='zero3'))


# ---- the real thing: the tiny DAMSM trainer (Adam, BatchNorm, an LSTM) ----

def _train(config, workdir, devices, num_steps):
  setup = loop.Setup(config, workdir, devices)
  state, _ = setup.init_or_restore()
  initial = jax.device_get(state)
  step = setup.jit_train_step()
  with jax.set_mesh(setup.mesh):
    for local in setup.train_batches(0, num_steps):
      state, metrics = step(state, parallel.global_batch(local, setup.mesh))
  specs = jax.tree.map(lambda x: x.sharding.spec, state)
  return initial, jax.device_get(state), jax.device_get(metrics), specs


def _fsdp(config):
  config.mesh.shape = (4, 2)
  config.sharding.update(strategy='fsdp', fsdp_min_size_mb=0.0, model_min_features=8)
  return config


def test_fsdp_lowers_memory_per_device_in_the_compile_report(data_dir, tmp_path):
  dp = tiny_configs.damsm(data_dir)
  dp.mesh.shape = (8, 1)
  sharded = _fsdp(tiny_configs.damsm(data_dir))
  report_dp = loop.compile_train_step(dp, str(tmp_path / 'dp'))
  # What `python -m t2ijax.main --mode=compile` runs.
  report_sharded = main.run(sharded, str(tmp_path / 'sharded'), 'compile')
  assert report_dp['mesh'] == {'data': 8, 'model': 1}
  assert report_sharded['mesh'] == {'data': 4, 'model': 2}
  assert report_dp['flops_per_device'] > 0
  # The plan: the same state, most of it split 4 or 8 ways.
  assert report_sharded['state_bytes_total'] == report_dp['state_bytes_total']
  assert report_dp['state_bytes_per_device'] == report_dp['state_bytes_total']
  assert report_sharded['state_bytes_per_device'] < 0.3 * report_dp['state_bytes_per_device']
  # The compiled program agrees: its arguments (the state and this device's
  # rows of the batch) shrink accordingly.
  args_dp = report_dp['memory_per_device']['argument_size_in_bytes']
  args_sharded = report_sharded['memory_per_device']['argument_size_in_bytes']
  assert args_dp >= report_dp['state_bytes_total']
  assert args_sharded < 0.4 * args_dp
  assert os.path.exists(tmp_path / 'sharded' / 'compile_report.json')


def test_fsdp_and_model_axis_match_a_single_device(data_dir, tmp_path):
  num_steps = 2
  initial, single, single_metrics, _ = _train(tiny_configs.damsm(data_dir), str(tmp_path / 'single'),
                                     jax.devices()[:1], num_steps)
  _, sharded, sharded_metrics, specs = _train(_fsdp(tiny_configs.damsm(data_dir)),
                                           str(tmp_path / 'sharded'), jax.devices(), num_steps)
  leaf_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  assert any('model' in s for s in leaf_specs) and any('data' in s for s in leaf_specs)
  np.testing.assert_allclose(sharded_metrics['loss'], single_metrics['loss'], rtol=1e-5)
  flat_single = jax.tree_util.tree_leaves_with_path(single)
  flat_sharded = jax.tree.leaves(sharded)
  assert len(flat_single) == len(flat_sharded) > 10
  for (path, a), b in zip(flat_single, flat_sharded):
    # Reductions run in another order when operands are split differently.
    scale = float(np.abs(a).max()) if np.size(a) else 0.0
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale + 1e-7,
                               err_msg=jax.tree_util.keystr(path))
  # The steps really moved the text encoder (so equality is not vacuous).
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(initial.nets['text'].params),
                                                 jax.tree.leaves(single.nets['text'].params))]
  assert all(moved)


@pytest.mark.parametrize('dtype, message', [
    ('bfloat16', 'not implemented for method'),   # DAMSM pretraining is float32 only
    ('float16', "is not 'float32' or 'bfloat16'"),
])
def test_compute_dtype_switch_refuses_what_is_not_there(data_dir, tmp_path, dtype, message):
  config = tiny_configs.damsm(data_dir)
  config.precision.compute_dtype = dtype
  with pytest.raises(errors.ConfigError, match=message):
    loop.Setup(config, str(tmp_path), jax.devices())
