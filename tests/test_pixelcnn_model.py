"""PixelCNN likelihood, training and conditioning.

Bits/dim against known answers and an independent NumPy formula; the loss falls
on a fixed batch; every kind of conditioning reaches the logits; and a
tiny class-conditional run goes through the harness: train, eval (bits/dim and
cached samples), --mode=sample.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax import errors
from t2ijax.losses import likelihood
from t2ijax.models import pixelcnn as model_lib
from t2ijax.trainers import pixelcnn as trainer
from tests import tiny_configs


def test_uniform_logits_give_8_bits_per_dim():
  image = jax.random.randint(jax.random.key(0), (3, 4, 5, 3), 0, 256)
  bpd = likelihood.image_bits_per_dim(jnp.zeros((3, 4, 5, 3, 256)), image)
  np.testing.assert_allclose(np.asarray(bpd), 8.0, rtol=1e-6)


def test_half_probability_gives_1_bit_per_dim():
  # Two equally likely levels, the target one of them: p = 1/2 -> 1 bit.
  image = jnp.full((2, 2, 2, 3), 9)
  logits = jnp.full((2, 2, 2, 3, 256), -1e9).at[..., 9].set(0.0).at[..., 200].set(0.0)
  np.testing.assert_allclose(np.asarray(likelihood.image_bits_per_dim(logits, image)), 1.0,
                             rtol=1e-6)


def test_bits_per_dim_matches_numpy_formula():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 2, 3, 256)) * 3
  image = rng.integers(0, 256, size=(2, 3, 2, 3))
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_p, image[..., None], -1).reshape(2, -1).sum(1)
  expected = nll / (3 * 2 * 3 * math.log(2))
  got = likelihood.image_bits_per_dim(jnp.asarray(logits, jnp.float32), jnp.asarray(image))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_dense_log_prob_and_its_gradient_match_autodiff_of_the_plain_formula():
  # The hand-written backward (likelihood.dense_log_prob) against jax.grad of
  # dense layer -> image_bits_per_dim, including a target at a masked-out level.
  k = jax.random.split(jax.random.key(0), 4)
  features = jax.random.normal(k[0], (2, 3, 4, 6))
  kernel = jax.random.normal(k[1], (6, 3 * 256)) * 0.5
  bias = jax.random.normal(k[2], (3 * 256,))
  image = jax.random.randint(k[3], (2, 3, 4, 3), 0, 256).at[0, 0, 0, 0].set(255)
  weights = jnp.arange(1.0, 3.0)   # a non-uniform cotangent per image

  def plain(f, w, b):
    logits = (f @ w + b).reshape(2, 3, 4, 3, 256)
    return jnp.sum(weights * likelihood.image_bits_per_dim(logits, image))

  def fused(f, w, b):
    return jnp.sum(weights * likelihood.dense_bits_per_dim(f, w, b, image))

  np.testing.assert_allclose(float(fused(features, kernel, bias)),
                             float(plain(features, kernel, bias)), rtol=1e-6)
  want = jax.grad(plain, argnums=(0, 1, 2))(features, kernel, bias)
  got = jax.grad(fused, argnums=(0, 1, 2))(features, kernel, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)


def test_model_head_split_gives_the_models_logits():
  # logits=False plus head_kernel is the same network as the full forward.
  model = _tiny_model('none')
  x = jax.random.randint(jax.random.key(1), (2, 8, 8, 3), 0, 256)
  params = model.init(jax.random.key(2), x)['params']
  logits = model.apply({'params': params}, x)
  features = model.apply({'params': params}, x, logits=False)
  kernel, bias = model_lib.head_kernel(params)
  np.testing.assert_allclose(np.asarray((features @ kernel + bias).reshape(logits.shape)),
                             np.asarray(logits), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(likelihood.dense_bits_per_dim(features, kernel, bias, x)),
      np.asarray(likelihood.image_bits_per_dim(logits, x)), rtol=1e-6)


def _tiny_model(condition, spatial=0, words=False, size=8, zero_init=False):
  # Widths of 4+ units per colour group, so ReLUs do not silence a whole group.
  # zero_init=False: random conditioning projections (a perturbed start), so
  # conditioning moves the logits at init; the default model zeroes them.
  return model_lib.PixelCnnModel(
      condition=condition, image_size=size, num_layers=2, features=12, kernel_size=3,
      first_kernel_size=3, skip_features=12, head_features=24, spatial_features=spatial,
      word_attention=words, bottleneck=4, encoder_width=4, zero_init_conditioning=zero_init)


@pytest.mark.parametrize('condition,spatial,words', [
    ('class', 0, False), ('class', 3, False), ('caption', 3, True), ('autoencoder', 3, False)])
def test_conditioning_reaches_logits(condition, spatial, words):
  model = _tiny_model(condition, spatial, words)
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3)) * 255
  k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
  if condition == 'class':
    make = lambda k: {'vector': jax.nn.one_hot(jax.random.randint(k, (2,), 0, 5), 5)}
  elif condition == 'caption':
    make = lambda k: {'vector': jax.random.normal(k, (2, 4)),
                      'words': jax.random.normal(jax.random.fold_in(k, 1), (2, 3, 4)),
                      'mask': jnp.ones((2, 3), bool)}
  else:
    make = lambda k: {'image': jax.random.uniform(k, (2, 8, 8, 3)) * 255}
  a, b = make(k1), make(k3)
  if condition == 'class':
    b = {'vector': 1.0 - a['vector'][:, ::-1][:, :5]}   # surely another vector
  variables = model.init(k2, x, a)
  logits = lambda cond: model.apply(variables, x, cond)
  assert float(jnp.abs(logits(a) - logits(b)).mean()) > 1e-4
  if words:
    # The words alone (same sentence vector) move the logits, through attention.
    c = dict(a, words=a['words'].at[:, 0].add(1.0))
    assert float(jnp.abs(logits(a) - logits(c)).mean()) > 1e-6


def test_conditional_model_starts_as_the_unconditional_one():
  # Zero-initialised conditioning projections: at init a caption model's logits
  # are the unconditional model's (same key, same decoder parameters), whatever
  # the caption; training then pulls the caption in (the projections' gradients
  # are the condition times the gates' gradients).
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3)) * 255
  k1, k2 = jax.random.split(jax.random.key(5))
  cond = {'vector': jax.random.normal(k1, (2, 4)), 'words': jax.random.normal(k2, (2, 3, 4)),
          'mask': jnp.ones((2, 3), bool)}
  model = _tiny_model('caption', 3, True, zero_init=True)
  variables = model.init(jax.random.key(2), x, cond)
  assert float(jnp.abs(variables['params']['decoder']['layer_1']['v_global']['kernel']).max()) == 0
  plain = _tiny_model('none')
  np.testing.assert_allclose(np.asarray(model.apply(variables, x, cond)),
                             np.asarray(plain.apply(plain.init(jax.random.key(2), x), x)),
                             rtol=0, atol=1e-5)


def test_conditioning_lr_scale_reaches_exactly_the_conditioning(data_dir):
  x = jnp.zeros((2, 8, 8, 3))
  cond = {'vector': jnp.ones((2, 4)), 'words': jnp.ones((2, 3, 4)), 'mask': jnp.ones((2, 3), bool)}
  shapes = jax.eval_shape(_tiny_model('caption', 3, True).init, jax.random.key(0), x, cond)
  params = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), shapes['params'])
  labels = trainer.conditioning_labels(params)
  assert set(jax.tree.leaves(labels['spatial'])) == {'conditioning'}
  assert set(jax.tree.leaves(labels['words'])) == {'conditioning'}
  layer = labels['decoder']['layer_1']
  for name in ('v_global', 'h_global', 'v_spatial', 'h_spatial'):
    assert set(jax.tree.leaves(layer[name])) == {'conditioning'}, name
  for name in ('v_conv', 'h_conv', 'link', 'h_out', 'skip'):
    assert set(jax.tree.leaves(layer[name])) == {'decoder'}, name
  assert set(jax.tree.leaves(labels['decoder']['head_2'])) == {'decoder'}
  # The optimizer's step: 0.1 x on the conditioning, 1 x elsewhere.
  config = _class_config(data_dir)
  config.optim.conditioning_lr_scale = 0.1
  method = trainer.PixelCnn(config, vocab=None, num_train_examples=32)
  updates, _ = jax.jit(lambda p: method.tx.update(p, method.tx.init(p), p))(params)
  np.testing.assert_allclose(np.asarray(updates['spatial']['fc']['kernel']),
                             0.1 * np.asarray(updates['decoder']['head_2']['kernel']).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(updates['decoder']['layer_0']['h_global']['kernel']),
                             0.1 * np.asarray(updates['decoder']['layer_0']['v_conv']['kernel'])
                             .mean(), rtol=1e-5)


def _class_config(data_dir):
  config = tiny_configs.load_config('pixelcnn', 'class')
  tiny_configs.apply(config, {
      'data.shapes.num_train': 32, 'data.shapes.num_test': 16, 'data.shapes.image_size': 16,
      'data.image_sizes': (16,), 'data.load_size': 16, 'data.captions_per_image': 2,
      'data.max_words': 8, 'data.num_parallel_calls': 2,
      'model.num_layers': 2, 'model.features': 6, 'model.kernel_size': 3,
      'model.first_kernel_size': 3, 'model.skip_features': 6, 'model.head_features': 12,
      'train.batch_size': 8, 'train.num_steps': 2, 'checkpoint.every_steps': 2,
      'checkpoint.use_async': False, 'log.every_steps': 1, 'log.sample_every_steps': -1,
      'eval.batch_size': 8, 'eval.num_batches': 1, 'eval.samples_per_batch': 2,
      'eval.shapes_classifier': False, 'sample.num_noise': 2, 'sample.class_ids': '3,4',
  })
  config.data.data_dir = data_dir
  return config


def test_loss_falls_on_a_fixed_batch(data_dir):
  config = _class_config(data_dir)
  config.optim.lr = 0.01
  method = trainer.PixelCnn(config, vocab=None, num_train_examples=32)
  state = jax.jit(method.init_state)(jax.random.key(0))
  rng = np.random.default_rng(0)
  # A batch with structure to learn: smooth colour ramps.
  ramp = np.linspace(0, 255, 16).astype(np.uint8)
  image = np.stack([np.broadcast_to(ramp[:, None], (16, 16)),
                    np.broadcast_to(ramp[None, :], (16, 16)),
                    np.full((16, 16), 77, np.uint8)], -1)
  batch = {'image16': np.repeat(image[None], 4, 0),
           'class_id': rng.integers(0, 30, 4).astype(np.int32)}
  step = jax.jit(method.train_step)
  first = None
  for _ in range(10):
    state, metrics = step(state, batch)
    first = float(metrics['bits_per_dim']) if first is None else first
  assert first > 6.0                               # ~8 at init
  assert float(metrics['bits_per_dim']) < first - 0.5


def test_class_variant_trains_evaluates_and_samples(data_dir, tmp_path):
  from t2ijax import main
  config = _class_config(data_dir)
  workdir = str(tmp_path / 'run')
  result = main.run(config, workdir, 'train')
  assert 0.0 < result['eval/bits_per_dim'] < 9.0
  assert result['eval/num_samples'] == 2          # cached samples of the eval batch
  # Paired with the neighbour's label; 2 trained steps may move it a little.
  assert abs(result['eval/condition_gain_bits_per_image']) < 50.0
  sampled = main.run(_class_config(data_dir), workdir, 'sample')
  assert os.path.exists(sampled['grid']) and sampled['num_samples'] == 4


def test_bad_config_is_a_config_error(data_dir):
  config = _class_config(data_dir)
  config.model.features = 10
  with pytest.raises(errors.ConfigError, match='multiple of 3'):
    trainer.PixelCnn(config, vocab=None, num_train_examples=32)
  config = _class_config(data_dir)
  config.data.image_sizes = (16, 32)
  with pytest.raises(errors.ConfigError, match='one image size'):
    trainer.PixelCnn(config, vocab=None, num_train_examples=32)
  config = _class_config(data_dir)
  config.sample.temperature = 0.0
  with pytest.raises(errors.ConfigError, match='sample.temperature'):
    trainer.PixelCnn(config, vocab=None, num_train_examples=32)


def test_mismatched_condition_eval_pairs_each_image_with_its_neighbours_label(data_dir):
  config = _class_config(data_dir)
  config.eval.samples_per_batch = 0                # bits/dim only
  method = trainer.PixelCnn(config, vocab=None, num_train_examples=32)
  state = jax.jit(method.init_state)(jax.random.key(0))
  rng = np.random.default_rng(1)
  batch = {'image16': rng.integers(0, 256, (4, 16, 16, 3)).astype(np.uint8),
           'class_id': np.array([0, 7, 14, 21], np.int32)}
  evaluate = jax.jit(method.eval_step)
  # Zero-initialised conditioning: the label changes nothing, bit for bit.
  out = evaluate(state, batch)
  np.testing.assert_array_equal(np.asarray(out['bits_per_dim']),
                                np.asarray(out['bits_per_dim_mismatched']))
  # Random conditioning weights: now it does, and "mismatched" is exactly the
  # bits/dim of the batch whose labels are rolled by one.
  net = state.nets['pixelcnn']
  labels = trainer.conditioning_labels(net.params)
  keys = iter(jax.random.split(jax.random.key(3), len(jax.tree.leaves(net.params))))
  params = jax.tree.map(
      lambda p, label: p + 0.3 * jax.random.normal(next(keys), p.shape)
      if label == 'conditioning' else p, net.params, labels)
  state = state.replace(nets=dict(state.nets, pixelcnn=net.replace(params=params)))
  out = evaluate(state, batch)
  matched, other = np.asarray(out['bits_per_dim']), np.asarray(out['bits_per_dim_mismatched'])
  assert np.abs(matched - other).max() > 1e-3
  rolled = dict(batch, class_id=np.roll(batch['class_id'], 1))
  np.testing.assert_allclose(
      other, np.asarray(jax.jit(method.bits_per_dim)(params, state, rolled)), rtol=1e-6)
  summary = method.summarize_eval([jax.device_get(out)])
  gain = (other.astype(np.float64) - matched) * 16 * 16 * 3
  assert summary['condition_gain_bits_per_image'] == pytest.approx(gain.mean(), rel=1e-6)
  assert summary['condition_gain_bits_per_image_sem'] == pytest.approx(
      gain.std(ddof=1) / 2.0, rel=1e-6)


def test_learning_rate_schedules(data_dir):
  optim = _class_config(data_dir).optim
  optim.lr = 0.002
  # A float, not a schedule: Adam's state keeps the layout of older checkpoints.
  assert trainer.learning_rate_schedule(optim, 100) == 0.002
  optim.schedule = 'cosine'
  cosine = trainer.learning_rate_schedule(optim, 100)
  # lr/2 (1 + cos(pi t / T)): the peak, half of it midway, 0 at the end.
  for step, expected in ((0, 0.002), (50, 0.001), (25, 0.001 * (1 + math.cos(math.pi / 4))),
                         (100, 0.0)):
    assert float(cosine(step)) == pytest.approx(expected, abs=1e-9), step
  with pytest.raises(errors.ConfigError, match='train.num_steps'):
    trainer.learning_rate_schedule(optim, 0)
  optim.schedule = 'linear'
  with pytest.raises(errors.ConfigError, match="'constant' or 'cosine'"):
    trainer.learning_rate_schedule(optim, 100)
