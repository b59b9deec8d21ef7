"""SD-GAN: SCBN and the contrastive loss against direct formulas, the networks'
shapes and parameters against AttnGAN's plus SCBN, and a tiny train step.

There is no official SD-GAN code (reference/attngan_family.md §6), so the
truths here are the paper's formulas written out in numpy and the AttnGAN
networks SD-GAN is built on.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t2ijax.models import attngan
from t2ijax.models import sdgan
from t2ijax.nn import conditional_norm
from t2ijax.trainers import sdgan as sdgan_trainer
from t2ijax.trainers import state as state_lib
from tests import tiny_configs


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def _randomized(params, seed):
  """Every parameter random, so zero-initialised deltas take part too."""
  rng = np.random.default_rng(seed)
  flat = {k: jnp.asarray(0.5 * rng.standard_normal(v.shape), jnp.float32)
          for k, v in _flat(params).items()}
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def _batch_norm(x):
  x = np.asarray(x, np.float64)
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))   # biased, as BN
  return (x - mean) / np.sqrt(var + 1e-5)


def test_sentence_scbn_is_the_formula():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((5, 3, 4, 6)) * 2 + 1, jnp.float32)
  sentence = jnp.asarray(rng.standard_normal((5, 7)), jnp.float32)
  scbn = conditional_norm.SemanticConditionedBatchNorm('sentence')
  variables = scbn.init(jax.random.key(0), x, sentence, train=True)
  out, _ = scbn.apply(variables, x, sentence, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(out, _batch_norm(x), atol=1e-4)   # starts as plain BN

  p = _flat(_randomized(variables['params'], 1))
  out, _ = scbn.apply({**variables, 'params': flax.traverse_util.unflatten_dict(p, sep='/')},
                      x, sentence, train=True, mutable=['batch_stats'])
  s = np.asarray(sentence, np.float64)
  gamma = (p['cbn/scale'] + s @ p['cbn/fc_gamma/linear1/kernel']
           + p['cbn/fc_gamma/linear1/bias'])
  beta = (p['cbn/bias'] + s @ p['cbn/fc_beta/linear1/kernel']
          + p['cbn/fc_beta/linear1/bias'])
  expected = gamma[:, None, None] * _batch_norm(x) + beta[:, None, None]
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  assert sorted(p) == ['cbn/bias', 'cbn/fc_beta/linear1/bias', 'cbn/fc_beta/linear1/kernel',
                       'cbn/fc_gamma/linear1/bias', 'cbn/fc_gamma/linear1/kernel',
                       'cbn/scale']


def test_word_scbn_is_the_formula_with_per_pixel_gamma_beta():
  rng = np.random.default_rng(2)
  b, h, w, c, t, d = 3, 4, 3, 5, 6, 7
  x = jnp.asarray(rng.standard_normal((b, h, w, c)) + 0.5, jnp.float32)
  words = jnp.asarray(rng.standard_normal((b, t, d)), jnp.float32)
  lengths = np.array([6, 2, 4])
  mask = jnp.asarray(np.arange(t)[None] < lengths[:, None])
  scbn = conditional_norm.SemanticConditionedBatchNorm('word')
  variables = scbn.init(jax.random.key(0), x, words, mask, train=True)
  p = _flat(_randomized(variables['params'], 3))
  out, stats = scbn.apply(
      {**variables, 'params': flax.traverse_util.unflatten_dict(p, sep='/')},
      x, words, mask, train=True, mutable=['batch_stats'])

  # Visual-semantic embedding: words projected to C, softmax over each
  # caption's real words of x_q . w_t, weighted sum; then 1x1 Linears.
  proj = np.einsum('btd,dc->btc', np.asarray(words, np.float64), p['att/conv_context/kernel'])
  logits = np.einsum('bhwc,btc->bhwt', np.asarray(x, np.float64), proj)
  logits = np.where(np.asarray(mask)[:, None, None, :], logits, -np.inf)
  a = np.exp(logits - logits.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  vse = np.einsum('bhwt,btc->bhwc', a, proj)
  gamma = (p['cbn/scale'] + vse @ p['cbn/fc_gamma/linear1/kernel']
           + p['cbn/fc_gamma/linear1/bias'])
  beta = p['cbn/bias'] + vse @ p['cbn/fc_beta/linear1/kernel'] + p['cbn/fc_beta/linear1/bias']
  expected = gamma * _batch_norm(x) + beta
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  # gamma really varies over space, and the running mean moved (momentum 0.1).
  assert np.std(gamma[0], axis=(0, 1)).min() > 1e-3
  np.testing.assert_allclose(stats['batch_stats']['cbn']['bn']['mean'],
                             0.1 * np.asarray(x).mean(axis=(0, 1, 2)), rtol=1e-4)
  # Padded words take no part: changing them changes nothing.
  words2 = words.at[1, 3:].set(100.0)
  out2, _ = scbn.apply(
      {**variables, 'params': flax.traverse_util.unflatten_dict(p, sep='/')},
      x, words2, mask, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(out2, out, atol=1e-5)


def test_scbn_refuses_a_condition_of_the_wrong_level():
  x = jnp.zeros((2, 3, 3, 4))
  with pytest.raises(ValueError, match='word-level SCBN takes'):
    conditional_norm.SemanticConditionedBatchNorm('word').init(
        jax.random.key(0), x, jnp.zeros((2, 5)), train=False)
  with pytest.raises(ValueError, match='level must be one of'):
    conditional_norm.SemanticConditionedBatchNorm('pixel').init(
        jax.random.key(0), x, jnp.zeros((2, 5)), train=False)


def test_contrastive_loss_is_the_formula():
  rng = np.random.default_rng(5)
  n, dim = 12, 4
  a = rng.standard_normal((n, dim)) * 0.4
  # Distances spread over [0, ~1.6]: below the floor, between, beyond the margin.
  b = a + rng.standard_normal((n, dim)) * np.linspace(0.0, 0.8, n)[:, None]
  b[0] = a[0]                                     # d = 0 exactly
  positive = rng.random(n) < 0.5
  positive[:2] = True
  terms = []
  for i in range(n):
    d = np.linalg.norm(a[i] - b[i])
    terms.append(max(d, 0.1) ** 2 if positive[i] else max(1.0 - d, 0.0) ** 2)
  expected = sum(terms) / (2 * n)
  loss = sdgan_trainer.contrastive_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(positive),
                                        margin=1.0, floor=0.1)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  dists = np.linalg.norm(a - b, axis=1)
  assert (dists[positive] < 0.1).any() and (dists[~positive] > 1.0).any()
  assert ((dists[~positive] < 1.0) & (dists[~positive] > 0.1)).any()

  grad = np.asarray(jax.grad(sdgan_trainer.contrastive_loss, argnums=1)(
      jnp.asarray(a), jnp.asarray(b), jnp.asarray(positive)))
  assert np.all(np.isfinite(grad))
  # No pull below the floor, no push beyond the margin; elsewhere a pull
  # (positives) or a push (negatives) along a - b.
  idle = (positive & (dists < 0.1)) | (~positive & (dists > 1.0))
  np.testing.assert_array_equal(grad[idle], 0.0)
  toward = np.sum(grad * (b - a), axis=1)        # > 0: descent moves b toward a
  assert np.all(toward[positive & ~idle] > 0) and np.all(toward[~positive & ~idle] < 0)


def test_siamese_pairs_take_the_next_row_of_the_same_class():
  labels = jnp.asarray([3, 1, 3, 2, 1, 5])
  partner, positive = sdgan_trainer.siamese_pairs(labels)
  # 0 -> 2 (next 3), 1 -> 4, 2 -> 0 (wraps), 3 -> 4 (no other 2: next row),
  # 4 -> 1 (wraps), 5 -> 0 (no other 5: next row, wrapping).
  np.testing.assert_array_equal(partner, [2, 4, 0, 4, 1, 0])
  np.testing.assert_array_equal(positive, [True, True, True, False, True, False])


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _scbn_extras(channels, nef, word):
  """f_gamma and f_beta (one Linear each), and the word level's projection."""
  source = channels if word else nef
  return 2 * (source * channels + channels) + (nef * channels if word else 0)


@pytest.mark.parametrize('refine_level', ['word', 'sentence'])
def test_generator_is_attngan_plus_scbn(refine_level):
  ngf, r_num, nef, z_dim, ncf, b, t = 4, 2, 12, 10, 6, 2, 5
  kwargs = dict(ngf=ngf, r_num=r_num, z_dim=z_dim, ncf=ncf, nef=nef, num_stages=3)
  sd = sdgan.Generator(refine_level=refine_level, **kwargs)
  base = attngan.Generator(**kwargs)
  args = (jnp.zeros((b, z_dim)), jnp.zeros((b, nef)), jnp.zeros((b, t, nef)),
          jnp.ones((b, t), bool))
  init = lambda g: jax.eval_shape(  # noqa: E731
      lambda k: g.init(k, *args, ca_key=k, train=False), jax.random.key(0))
  sd_vars, base_vars = init(sd), init(base)
  word = refine_level == 'word'
  # Init stage: upBlocks at 2 * 16ngf / 2^i channels, sentence level.
  extras = sum(_scbn_extras(2 * 16 * ngf // 2**i, nef, False) for i in range(1, 5))
  # Each refinement stage: ResBlock BNs at 4ngf and 2ngf, the upBlock's at 2ngf.
  per_stage = (r_num * (_scbn_extras(4 * ngf, nef, word) + _scbn_extras(2 * ngf, nef, word))
               + _scbn_extras(2 * ngf, nef, word))
  extras += 2 * per_stage
  assert _count(sd_vars['params']) == _count(base_vars['params']) + extras
  # Same tree as AttnGAN's once each SCBN is read as the BN it replaced:
  # every other name (convs, CA, attention, image heads) is AttnGAN's.
  sd_names = set()
  for path in _flat(sd_vars['params']):
    if '/fc_gamma/' in path or '/fc_beta/' in path or '/bn/att/' in path or (
        '/bn1/att/' in path or '/bn2/att/' in path):
      continue
    sd_names.add(path.replace('/cbn/', '/'))
  assert sd_names == set(_flat(base_vars['params']))
  assert _count(sd_vars['batch_stats']) == _count(base_vars['batch_stats'])
  # Outputs as AttnGAN's: 64, 128, 256 images, one attention map per refinement.
  out = jax.eval_shape(lambda v: sd.apply(v, *args, ca_key=jax.random.key(1)), sd_vars)
  assert [x.shape for x in out['images']] == [(b, s, s, 3) for s in (64, 128, 256)]
  assert [x.shape for x in out['attention_maps']] == [(b, 64, 64, t), (b, 128, 128, t)]


def test_discriminator_adds_a_unit_siamese_head():
  ndf, nef = 4, 12
  d = sdgan.Discriminator(ndf=ndf, image_size=64, nef=nef, siamese_dim=16)
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 64, 64, 3)), jnp.float32)
  variables = _random_variables(d, images, jnp.zeros((3, nef)), seed=0)
  out = jax.jit(d.apply)(variables, images, jnp.ones((3, nef)))
  assert out['siamese'].shape == (3, 16)
  np.testing.assert_allclose(np.linalg.norm(out['siamese'], axis=1), 1.0, rtol=1e-5)
  base = attngan.Discriminator(ndf=ndf, image_size=64, nef=nef)
  base_vars = jax.eval_shape(lambda k: base.init(k, images, jnp.zeros((3, nef))),
                             jax.random.key(0))
  extra = set(_flat(variables['params'])) - set(_flat(base_vars['params']))
  assert extra == {'SIAMESE/fc/kernel', 'SIAMESE/fc/bias'}
  assert variables['params']['SIAMESE']['fc']['kernel'].shape == (4 * 4 * 8 * ndf, 16)


def test_configs_build():
  for variant in ('cub', 'coco', 'demo'):
    config = tiny_configs.load_config('sdgan', variant)
    assert config.method == 'sdgan'
    assert (config.loss.contrastive_margin, config.loss.contrastive_floor) == (1.0, 0.1)
  assert tiny_configs.load_config('sdgan', 'demo').data.source == 'shapes'
  assert tiny_configs.load_config('sdgan', 'coco').model.r_num == 3


def _random_variables(module, *args, seed, **kwargs):
  """Variables of `module` drawn in numpy from init's shapes (no init compile).

  Kernels N(0, 1/fan_in), BN scales 1 and biases 0, SCBN deltas small,
  running statistics 0 and 1: a sane network, like a trained one.
  """
  shapes = jax.eval_shape(lambda k: module.init(k, *args, **kwargs), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = '/'.join(str(getattr(p, 'key', p)) for p in path)
    if name.endswith('mean') or name.endswith('bias'):
      return jnp.zeros(leaf.shape, leaf.dtype)
    if name.endswith('var') or name.endswith('scale'):
      return jnp.ones(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    std = (0.1 if '/fc_gamma/' in name or '/fc_beta/' in name else 1.0) / np.sqrt(fan_in)
    return jnp.asarray(std * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _tiny_method(batch, t, nef):
  """An SdGan without a DAMSM: text features from a fixed random table."""
  config = tiny_configs.load_config('sdgan', 'demo')
  config.model.update(ngf=2, ndf=2, nef=nef, z_dim=6, ncf=4, siamese_dim=8)
  method = sdgan_trainer.SdGan.__new__(sdgan_trainer.SdGan)
  method.config, method.sizes = config, [64, 128]
  method.compute_dtype = 'float32'
  method.generator = method.make_generator()
  method.discriminators = [method.make_discriminator(s) for s in method.sizes]
  method.txs = {'G': optax.adam(2e-4, 0.5, 0.999), 'D0': optax.adam(2e-4, 0.5, 0.999),
                'D1': optax.adam(2e-4, 0.5, 0.999)}
  table = jax.random.normal(jax.random.key(9), (20, nef))

  def encode_text(state, ids, lengths):
    del state
    mask = jnp.arange(ids.shape[1])[None] < lengths[:, None]
    words = table[ids] * mask[..., None]
    return words, words.sum(1) / lengths[:, None], mask

  method.encode_text = encode_text
  method.generator_extra_losses = lambda *args: {}   # no DAMSM here
  sentence, words = jnp.zeros((2, nef)), jnp.zeros((2, t, nef))
  g_vars = _random_variables(method.generator, jnp.zeros((2, 6)), sentence, words,
                             jnp.ones((2, t), bool), ca_key=jax.random.key(1), seed=0)
  nets = {'G': state_lib.new_net(g_vars['params'], method.txs['G'],
                                 collections={'batch_stats': g_vars['batch_stats']},
                                 ema=True)}
  for i, (size, d) in enumerate(zip(method.sizes, method.discriminators)):
    d_vars = _random_variables(d, jnp.zeros((2, size, size, 3)), sentence, seed=1 + i)
    nets[f'D{i}'] = state_lib.new_net(d_vars['params'], method.txs[f'D{i}'],
                                      collections={'batch_stats': d_vars['batch_stats']})
  state = state_lib.TrainState(step=jnp.asarray(0, jnp.int32),
                               rng=jax.random.key_data(jax.random.key(1)), nets=nets)
  rng = np.random.default_rng(0)
  data = {'caption': jnp.asarray(rng.integers(1, 20, (batch, t)), jnp.int32),
          'caption_len': jnp.asarray([t, 3, 2, 4][:batch], jnp.int32),
          'wrong_caption': jnp.asarray(rng.integers(1, 20, (batch, t)), jnp.int32),
          'wrong_caption_len': jnp.full((batch,), t, jnp.int32),
          'class_id': jnp.asarray([0, 0, 1, 2][:batch], jnp.int32)}
  for s in method.sizes:
    data[f'image{s}'] = jnp.asarray(rng.integers(0, 256, (batch, s, s, 3)), jnp.uint8)
  return method, state, data


def test_tiny_train_step_is_finite_and_contrastive_gradient_reaches_g():
  method, state, batch = _tiny_method(batch=4, t=5, nef=6)
  new_state, metrics = jax.jit(method.train_step)(state, batch)
  for key in ('D0_loss', 'D1_loss', 'D0_contrastive', 'G0_contrastive', 'G1_contrastive',
              'G_loss', 'kl'):
    assert np.isfinite(metrics[key]), key
  np.testing.assert_allclose(metrics['siamese_positive_fraction'], 0.5)   # rows 0 and 1
  for name in ('G', 'D0', 'D1'):
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                         state.nets[name].params, new_state.nets[name].params)
    assert max(jax.tree.leaves(moved)) > 0, name

  # The contrastive term alone, through D's Siamese head, has a gradient in
  # every stage of G, SCBN's text-conditioned deltas included.
  words, sentence, mask = method.encode_text(None, batch['caption'], batch['caption_len'])
  partner, positive = sdgan_trainer.siamese_pairs(batch['class_id'])
  g = state.nets['G']
  z = jax.random.normal(jax.random.key(3), (4, 6))

  def contrastive_only(params):
    out, _ = method.generate(g, params, z, sentence, words, mask, jax.random.key(4), True)
    total = 0.0
    for i in range(len(method.discriminators)):
      net = state.nets[f'D{i}']
      terms, _ = method.generator_adversarial(
          i, net.params, net.collections, out['images'][i], sentence,
          {'partner': partner, 'positive': positive})
      total = total + terms[f'G{i}_contrastive']
    return total

  grads = _flat(jax.jit(jax.grad(contrastive_only))(g.params))
  assert all(np.all(np.isfinite(v)) for v in grads.values())
  norm = lambda prefix: sum(float(jnp.sum(v ** 2)) for k, v in grads.items()  # noqa: E731
                            if k.startswith(prefix))
  for prefix in ('ca_net', 'h_net1/fc', 'h_net1/upsample1/bn/cbn/fc_gamma',
                 'h_net2/residual_0/bn1/cbn/fc_gamma', 'h_net2/upsample/conv', 'img_net2'):
    assert norm(prefix) > 0, prefix
