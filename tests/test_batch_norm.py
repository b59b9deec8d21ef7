"""t2ijax.nn.batch_norm.BatchNorm is flax's BatchNorm with matmul-summed statistics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax.nn import batch_norm
from t2ijax.nn import layers


def _pair():
  ours = batch_norm.BatchNorm(use_running_average=False, momentum=0.9,
                              scale_init=layers.bn_scale_init)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                         scale_init=layers.bn_scale_init)
  return ours, flax_bn


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_matches_flax_batch_norm(dtype):
  x = jax.random.normal(jax.random.key(0), (6, 10, 10, 5)) * 3.0 + 1.0
  ours, flax_bn = _pair()
  init_ours = ours.init(jax.random.key(1), x)
  init_flax = flax_bn.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, init_ours, init_flax)   # same init
  params = jax.tree.map(lambda a: a.astype(dtype), init_ours['params'])

  def run(module, params, x):
    y, new = module.apply({'params': params, 'batch_stats': init_ours['batch_stats']},
                          x.astype(dtype), mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, new)

  (_, (y1, s1)), g1 = jax.value_and_grad(run, argnums=(1, 2), has_aux=True)(ours, params, x)
  (_, (y2, s2)), g2 = jax.value_and_grad(run, argnums=(1, 2), has_aux=True)(flax_bn, params, x)
  assert y1.dtype == y2.dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(y1.astype(np.float32), y2.astype(np.float32), atol=tol)
  for a, b in zip(jax.tree.leaves((s1, g1)), jax.tree.leaves((s2, g2))):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=tol, atol=tol)
  # The running averages moved from their initial values by the flax rule.
  mean = np.asarray(x, np.float64).mean((0, 1, 2))
  np.testing.assert_allclose(s1['batch_stats']['mean'], 0.1 * mean, rtol=1e-3)


def test_eval_mode_uses_running_averages():
  x = jax.random.normal(jax.random.key(2), (4, 3, 3, 2))
  ours = batch_norm.BatchNorm(use_running_average=True)
  variables = ours.init(jax.random.key(3), x)
  variables = dict(variables, batch_stats={'mean': jnp.array([1.0, -1.0]),
                                           'var': jnp.array([4.0, 0.25])})
  y = ours.apply(variables, x)
  scale, bias = variables['params']['scale'], variables['params']['bias']
  expected = (x - jnp.array([1.0, -1.0])) / jnp.sqrt(jnp.array([4.0, 0.25]) + 1e-5) * scale + bias
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_both_ways_of_summing_give_the_moments():
  # An offset of 5 standard deviations: E[x^2] - E[x]^2 cancels ~1.5 digits,
  # in either way of summing (flax's fast variance does the same).
  x = jax.random.normal(jax.random.key(4), (3, 7, 5, 4)) + 5.0
  x64 = np.asarray(x, np.float64)
  for as_matmul in (True, False):
    mean, var = batch_norm.batch_moments(x, as_matmul=as_matmul)
    np.testing.assert_allclose(mean, x64.mean((0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(var, x64.var((0, 1, 2)), rtol=1e-4)
