"""The cached sampler draws exactly what naive sampling draws, and shards.

Naive sampling runs the whole decoder once per sub-pixel; the cached sampler
(per-layer row caches and row buffers, lax.scan over rows and columns) must give
the same integers under the same key, and its logits must be the full forward's
logits of the image it drew (reference/pixelcnn_metrics.md A7.1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from t2ijax.models import pixelcnn as model_lib
from t2ijax.trainers import pixelcnn_sampling as sampling

SIZE = 6


def _setup(condition, batch):
  spatial = 6 if condition != 'none' else 0
  model = model_lib.PixelCnnModel(
      condition=condition, image_size=SIZE, num_layers=2, features=12, kernel_size=3,
      first_kernel_size=5, skip_features=12, head_features=24, spatial_features=spatial,
      word_attention=condition == 'caption',
      # Random (not zero) conditioning projections: the cached sampler's
      # conditioning terms must matter for the comparison to test them.
      zero_init_conditioning=False)
  k1, k2 = jax.random.split(jax.random.key(3))
  cond = {}
  if condition == 'caption':
    cond = {'vector': jax.random.normal(k1, (batch, 10)),
            'words': jax.random.normal(k2, (batch, 4, 10)),
            'mask': jnp.array([[1, 1, 1, 0]] * batch, bool)}
  x = jnp.zeros((batch, SIZE, SIZE, 3))
  variables = model.init(jax.random.key(0), x, cond)
  # Larger logits than at init, so samples are not near-uniform noise and
  # a wrong conditional would show.
  variables = jax.tree.map(lambda v: v * 1.5, variables)
  g, s = model.apply(variables, cond, method=model.conditioning)
  return model, variables['params'], g, s


@pytest.mark.parametrize('condition,temperature', [('none', 1.0), ('caption', 0.6)])
def test_cached_equals_naive(condition, temperature):
  model, params, g, s = _setup(condition, batch=2)
  key = jax.random.key(11)
  naive = jax.jit(lambda p, gg, ss: sampling.naive_sample(
      model, p, gg, ss, key, 2, temperature=temperature))(params, g, s)
  cached, logits = jax.jit(lambda p, gg, ss: sampling.cached_sample(
      model, p, gg, ss, key, 2, return_logits=True, temperature=temperature))(params, g, s)
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(naive))
  # The logits the cached sampler drew from are the full forward's on its image.
  full = model.apply({'params': params}, cached, g, s, method=model.decode)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(full), atol=2e-5, rtol=1e-5)
  # Not a degenerate draw: values vary over the image.
  assert len(np.unique(np.asarray(cached))) > 20
  # Another key, other samples.
  other = jax.jit(lambda p, gg, ss: sampling.cached_sample(
      model, p, gg, ss, jax.random.key(12), 2, temperature=temperature))(params, g, s)
  assert np.mean(np.asarray(other) != np.asarray(cached)) > 0.5


def test_temperature_toward_zero_draws_the_most_likely_value():
  # Same model and key: at temperature 1 the draws spread over the model's
  # distribution; as the temperature goes to 0 they become its argmax (of the
  # untempered logits the sampler returns, given the pixels drawn before).
  model, params, g, s = _setup('caption', batch=4)
  key = jax.random.key(21)

  def argmax_share(temperature):
    x, logits = jax.jit(lambda p, gg, ss: sampling.cached_sample(
        model, p, gg, ss, key, 4, return_logits=True, temperature=temperature))(params, g, s)
    return float(jnp.mean(x == jnp.argmax(logits, -1)))

  assert argmax_share(1.0) < 0.5
  assert argmax_share(0.01) > 0.9


def test_cached_sampler_sharded_over_data_axis():
  batch = 8
  model, params, g, s = _setup('caption', batch)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  rows = NamedSharding(mesh, P('data'))
  key = jax.random.key(5)
  fn = lambda p, gg, ss: sampling.cached_sample(model, p, gg, ss, key, batch)
  single = jax.jit(fn)(params, g, s)
  sharded = jax.jit(fn, in_shardings=(NamedSharding(mesh, P()), rows, rows),
                    out_shardings=rows)(params, jax.device_put(g, rows),
                                        jax.device_put(s, rows))
  assert sharded.sharding.spec == P('data')
  np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))
