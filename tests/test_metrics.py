"""FID, Inception Score, R-precision and the sharded Inception feature extractor.

Truths used: pytorch-fid's formula rewritten here with an eigenvalue route
(no scipy.linalg.sqrtm), np.mean / np.cov, the improved-gan IS definition
with known answers (uniform -> 1, confident over K classes -> K), R-precision
cases with known answers, and the unsharded Inception on one device.
"""

import os
import subprocess
import sys

import flax.core
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from t2ijax import errors
from t2ijax.encoders import inception
from t2ijax.evaluation import features
from t2ijax.evaluation import fid
from t2ijax.evaluation import fid_cli
from t2ijax.evaluation import image_sources
from t2ijax.evaluation import inception_score
from t2ijax.evaluation import r_precision
from t2ijax.evaluation import suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------


def _psd_sqrt(matrix):
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _reference_fid(x1, x2):
  """pytorch-fid's d^2 from its definition, Tr sqrtm(S1 S2) by eigenvalues.

  S1 S2 is similar to sqrt(S1) S2 sqrt(S1), which is symmetric PSD, so the
  trace of its square root is the sum of the roots of those eigenvalues.
  """
  mu1, mu2 = x1.mean(0), x2.mean(0)
  s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
  root1 = _psd_sqrt(s1)
  middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
  tr_covmean = np.sum(np.sqrt(np.clip(middle, 0, None)))
  return (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
          - 2 * tr_covmean)


def test_fid_matches_the_formula_and_is_zero_for_the_same_set():
  rng = np.random.default_rng(0)
  x1 = rng.normal(size=(300, 48))
  mixing = np.eye(48) + 0.3 * rng.normal(size=(48, 48))
  x2 = rng.normal(0.2, 1.0, size=(250, 48)) @ mixing
  got = fid.frechet_distance(*fid.statistics(x1), *fid.statistics(x2))
  want = _reference_fid(x1, x2)
  assert want > 1.0  # Far from zero, so a relative tolerance means something.
  np.testing.assert_allclose(got, want, rtol=1e-4)

  same = fid.frechet_distance(*fid.statistics(x1), *fid.statistics(x1))
  assert abs(same) < 1e-8 * np.trace(np.cov(x1, rowvar=False))


def test_running_statistics_equal_mean_and_cov_of_all_features():
  rng = np.random.default_rng(1)
  # A large mean next to a small spread: naive sums (sum x x^T - n mu mu^T)
  # would be off by ~1e-4 of the covariance here.
  x = 1e6 + rng.normal(size=(101, 16)) @ rng.normal(size=(16, 16))
  x = x.astype(np.float32)  # Features arrive from the device in float32.
  stats = fid.RunningStats()
  for start, stop in ((0, 7), (7, 7), (7, 60), (60, 101)):
    stats.update(x[start:stop])
  x = x.astype(np.float64)
  mu, sigma = stats.mean_and_covariance()
  assert stats.count == 101
  np.testing.assert_allclose(mu, np.mean(x, 0), rtol=1e-12)
  cov = np.cov(x, rowvar=False)
  np.testing.assert_allclose(sigma, cov, rtol=1e-9, atol=1e-9 * np.abs(cov).max())


def test_fid_raises_on_a_large_imaginary_component():
  # sqrtm(diag(1, -1)) has i on its diagonal: not a covariance product.
  with pytest.raises(ValueError, match='maginary component'):
    fid.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2),
                         np.eye(2))


def test_stats_npz_round_trip_in_pytorch_fid_format(tmp_path):
  rng = np.random.default_rng(2)
  mu, sigma = rng.normal(size=8), np.cov(rng.normal(size=(20, 8)), rowvar=False)
  path = fid.save_stats(tmp_path / 'ours', mu, sigma)
  assert path.endswith('.npz')
  with np.load(path) as data:  # What pytorch-fid reads: f['mu'], f['sigma'].
    assert sorted(data.files) == ['mu', 'sigma']
    np.testing.assert_array_equal(data['mu'], mu)
    np.testing.assert_array_equal(data['sigma'], sigma)
  theirs = tmp_path / 'theirs.npz'
  np.savez(theirs, mu=mu.astype(np.float32), sigma=sigma)  # --save-stats.
  got_mu, got_sigma = fid.load_stats(theirs)
  np.testing.assert_array_equal(got_mu, mu.astype(np.float32))
  np.testing.assert_array_equal(got_sigma, sigma)


def test_bad_stats_files_raise_clear_errors(tmp_path):
  with pytest.raises(errors.DataLayoutError, match='No FID statistics file'):
    fid.load_stats(tmp_path / 'missing.npz')
  np.savez(tmp_path / 'keys.npz', mean=np.zeros(3), cov=np.eye(3))
  with pytest.raises(errors.DataLayoutError, match="not pytorch-fid's mu"):
    fid.load_stats(tmp_path / 'keys.npz')
  np.savez(tmp_path / 'shape.npz', mu=np.zeros(3), sigma=np.eye(4))
  with pytest.raises(errors.DataLayoutError, match='covariance'):
    fid.load_stats(tmp_path / 'shape.npz')


# ---------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------


def _improved_gan_is(probs, splits):
  """The improved-gan loop, written out with explicit sums."""
  n, scores = len(probs), []
  for k in range(splits):
    part = probs[k * n // splits:(k + 1) * n // splits]
    marginal = part.mean(0)
    kl = [sum(p * np.log(p / q) for p, q in zip(row, marginal) if p > 0)
          for row in part]
    scores.append(np.exp(np.mean(kl)))
  return np.mean(scores), np.std(scores)


def test_inception_score_known_answers():
  mean, std = inception_score.inception_score_from_logits(np.zeros((50, 7)))
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0)

  k = 6  # 10 splits of 2K rows: every split holds each class twice.
  probs = np.eye(k)[np.arange(10 * 2 * k) % k]
  mean, std = inception_score.inception_score_from_probs(probs)
  assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0)
  # Confident logits approach the same answer.
  mean, _ = inception_score.inception_score_from_logits(60.0 * probs)
  assert mean == pytest.approx(k, rel=1e-6)


def test_inception_score_matches_the_definition():
  rng = np.random.default_rng(3)
  logits = 2.0 * rng.normal(size=(53, 5))  # 53: splits of 5 and 6 rows.
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  got = inception_score.inception_score_from_logits(logits)
  np.testing.assert_allclose(got, _improved_gan_is(probs, 10), rtol=1e-10)
  with pytest.raises(ValueError, match='splits'):
    inception_score.inception_score_from_logits(logits[:9])


# ---------------------------------------------------------------------------
# R-precision
# ---------------------------------------------------------------------------


def test_r_precision_is_one_when_images_match_their_captions():
  rng = np.random.default_rng(4)
  text = rng.normal(size=(200, 16))
  classes = rng.integers(0, 20, size=200)
  result = r_precision.r_precision(3.0 * text, text, classes)
  assert result == {'r_precision': 1.0, 'r_precision_std': 0.0}


def test_r_precision_of_random_features_is_near_chance():
  rng = np.random.default_rng(5)
  n = 3000
  result = r_precision.r_precision(rng.normal(size=(n, 32)),
                                   rng.normal(size=(n, 32)), np.arange(n))
  # Chance is 1 / 100; 30 expected hits, so 3 sigma is about +-0.0055.
  assert 0.004 < result['r_precision'] < 0.017
  assert result['r_precision_std'] > 0


def test_hits_rank_by_cosine_and_ties_go_to_the_true_caption():
  image = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
  true = np.array([[2.0, 1.0], [3.0, 0.0], [1.0, 1.0]])
  mismatched = np.array([[[1.0, 0.1], [0.0, 1.0]],   # closer: a miss
                         [[5.0, 0.0], [0.0, 1.0]],   # a tie at cosine 1: a hit
                         [[1.0, 0.0], [0.0, 1.0]]])  # zero image: all 0, hit
  np.testing.assert_array_equal(
      r_precision.hits(image, true, mismatched), [False, True, True])


def test_mismatched_captions_come_from_other_classes():
  rng = np.random.default_rng(6)
  pool = np.array([0] * 95 + [1, 2, 3, 4, 5])  # Class 0 fills the pool.
  images = np.array([0, 1, 0, 5])
  index = r_precision.sample_mismatched(images, pool, 99, rng)
  assert index.shape == (4, 99)
  assert not np.any(pool[index] == images[:, None])
  assert set(pool[index[0]]) == {1, 2, 3, 4, 5}  # Uniform over the rest.
  with pytest.raises(ValueError, match='other than 7'):
    r_precision.sample_mismatched(np.array([7]), np.array([7, 7]), 3, rng)


def test_ten_chunk_mean_and_std():
  outcomes = np.array([1.0] * 17 + [0.0] * 13)
  mean, std = r_precision.chunk_mean_std(outcomes, np.random.default_rng(7))
  shuffled = outcomes.copy()
  np.random.default_rng(7).shuffle(shuffled)
  chunk_means = shuffled.reshape(10, 3).mean(1)
  assert mean == pytest.approx(17 / 30)  # Equal chunks: the overall mean.
  assert std == pytest.approx(np.std(chunk_means))
  assert std > 0
  with pytest.raises(ValueError, match='chunks'):
    r_precision.chunk_mean_std(outcomes[:9], np.random.default_rng(0))


# ---------------------------------------------------------------------------
# Sharded feature extraction and weights
# ---------------------------------------------------------------------------


def _random_fid_variables(seed=0, num_classes=1008):
  """He-normal convs and mild BN statistics: O(1) activations, fast to make."""
  model = inception.InceptionV3('fid', num_classes=num_classes)
  size = inception.FID_IMAGE_SIZE
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(
      flax.core.unfreeze(abstract)).items():
    shape, name = leaf.shape, path[-1]
    if name == 'kernel':
      fan_in = int(np.prod(shape[:-1]))
      value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
    elif name in ('scale', 'var'):
      value = rng.uniform(0.7, 1.3, shape)
    else:  # bias, mean
      value = rng.normal(0, 0.1, shape)
    flat[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(flat)


@pytest.fixture(scope='module')
def fid_variables():
  return _random_fid_variables()


def _images(seed, count, size=32):
  return np.random.default_rng(seed).integers(
      0, 256, size=(count, size, size, 3), dtype=np.uint8)


def test_batched_apply_regroups_pads_and_keeps_order():
  mesh = features.default_mesh()
  assert mesh.shape['data'] == 8
  fn = lambda v, x: {'sum': jnp.sum(x.astype(jnp.float32), (1, 2, 3)) * v}
  apply = features.BatchedApply(fn, jnp.float32(2.0), mesh=mesh, batch_size=5)
  assert apply.batch_size == 8  # Rounded up to the data axis.
  images = _images(8, 15, size=4)
  chunks = [images[:3], images[3:10], images[10:]]
  outs = list(apply.iterate(chunks))
  assert [len(o['sum']) for o in outs] == [8, 7]
  got = np.concatenate([o['sum'] for o in outs])
  np.testing.assert_array_equal(
      got, 2.0 * images.astype(np.float64).sum((1, 2, 3)))
  with pytest.raises(errors.ConfigError, match='one size'):
    list(apply.iterate([images[:2], images[:2, :2]]))


def test_sharded_inception_features_equal_an_unsharded_call(fid_variables):
  images = _images(9, 11)  # 11 = one batch of 8 and a padded one.
  extractor = features.FidInception(
      inception.InceptionV3('fid', 1008, precision=jax.lax.Precision.HIGHEST),
      fid_variables, batch_size=8)
  assert extractor._apply.mesh.shape['data'] == 8  # pylint: disable=protected-access
  got = extractor(images)

  model = inception.InceptionV3('fid', 1008)
  device = jax.devices()[0]
  single = jax.jit(lambda v, x: model.apply(
      v, inception.fid_preprocess(x.astype(jnp.float32) / 255.0)))
  want = jax.device_get(single(jax.device_put(fid_variables, device),
                               jax.device_put(images, device)))
  for name in ('pool3', 'logits'):
    assert got[name].shape == want[name].shape
    scale = np.abs(want[name]).max()
    assert scale > 1e-2, f'{name} is (nearly) zero; the test is void'
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5,
                               atol=1e-5 * scale, err_msg=name)
  # Different images, different features: the comparison is not of constants.
  pool3 = got['pool3']
  assert np.abs(pool3[0] - pool3[1]).max() > 1e-3 * np.abs(pool3).max()


def test_weights_files_load_or_say_how_to_get_them(fid_variables, tmp_path):
  with pytest.raises(errors.ConfigError, match=features.WEIGHTS_FILE):
    features.load_fid_inception('')
  with pytest.raises(errors.CheckpointError, match='No Inception weights'):
    features.load_fid_inception(tmp_path / 'missing.pth')
  path = features.save_inception_variables(tmp_path / 'fid.msgpack',
                                           fid_variables)
  model, variables = features.load_fid_inception(path)
  assert model.flavor == 'fid' and model.num_classes == 1008
  jax.tree.map(np.testing.assert_array_equal, variables, fid_variables)

  broken = traverse_util.flatten_dict(fid_variables)
  broken[('params', 'Mixed_7b', 'branch1x1', 'conv', 'kernel')] = np.zeros(
      (1, 1, 1280, 3), np.float32)
  del broken[('batch_stats', 'Mixed_5b', 'branch_pool', 'bn', 'var')]
  features.save_inception_variables(tmp_path / 'broken.msgpack',
                                    traverse_util.unflatten_dict(broken))
  with pytest.raises(errors.CheckpointError,
                     match=r'(?s)missing batch_stats/Mixed_5b.*Mixed_7b'):
    features.load_fid_inception(tmp_path / 'broken.msgpack')


def test_host_resize_matches_the_device_resize():
  image = _images(10, 1, size=37)[0]
  got = image_sources.resize_to_inception(image)
  want = inception.resize_bilinear_half_pixel(
      jnp.asarray(image[None], jnp.float32) / 255.0, 299)[0]
  np.testing.assert_allclose(got, np.asarray(want), rtol=0, atol=1e-6)


def test_cli_saves_folder_statistics_and_compares_npz_files(fid_variables,
                                                            tmp_path):
  weights = features.save_inception_variables(tmp_path / 'w.msgpack',
                                              fid_variables)
  folder = tmp_path / 'images' / 'class_a'  # Subfolders are searched.
  folder.mkdir(parents=True)
  images = _images(11, 5)
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f'{i}.png')
  options = fid_cli.Options(inception=weights, save_stats=True, batch_size=8)
  out = fid_cli.run_command([str(tmp_path / 'images'),
                             str(tmp_path / 's.npz')], options)
  assert out['num_images'] == 5
  extractor = features.FidInception.from_file(weights, batch_size=8)
  want_mu, want_sigma = fid.statistics(extractor(images)['pool3'])
  mu, sigma = fid.load_stats(out['saved'])
  np.testing.assert_allclose(mu, want_mu, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(sigma, want_sigma, rtol=1e-5, atol=1e-9)

  rng = np.random.default_rng(12)
  a, b = rng.normal(size=(40, 6)), rng.normal(1.0, 1.0, size=(30, 6))
  fid.save_stats(tmp_path / 'a.npz', *fid.statistics(a))
  fid.save_stats(tmp_path / 'b.npz', *fid.statistics(b))
  out = fid_cli.run_command([str(tmp_path / 'a.npz'), str(tmp_path / 'b.npz')],
                            fid_cli.Options())
  assert out['fid'] == pytest.approx(_reference_fid(a, b), rel=1e-6)


def test_cli_without_weights_says_where_to_get_them(tmp_path):
  for name in ('a', 'b'):
    (tmp_path / name).mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 't2ijax.evaluation.fid', str(tmp_path / 'a'),
       str(tmp_path / 'b')], cwd=ROOT, capture_output=True, text=True,
      timeout=120, check=False)
  assert result.returncode == 2, result.stderr
  assert 'pt_inception-2015-12-05-6726825d.pth' in result.stderr


# ---------------------------------------------------------------------------
# The GAN evaluation's metric suite
# ---------------------------------------------------------------------------


class _FakeExtractor:
  """Low-dimensional 'pool3' and 'logits' so the suite's FID is well posed."""
  batch_size = 4
  has_logits = True

  def iterate(self, batches):
    for images in batches:
      x = images.reshape(len(images), -1)[:, :6].astype(np.float64)
      yield {'pool3': x, 'logits': x[:, :3]}


def _eval_config(**fields):
  import ml_collections  # pylint: disable=g-import-not-at-top
  base = dict(metrics=suite.METRICS, inception_weights='', fid_stats='',
              inception_batch_size=4)
  base.update(fields)
  return ml_collections.ConfigDict(base)


def test_suite_skips_what_is_not_configured_and_says_why():
  rng = np.random.default_rng(13)
  text = rng.normal(size=(40, 8))
  result = suite.generated_image_metrics(
      _eval_config(), _images(14, 40, size=4), image_features=text,
      text_features=text, class_ids=np.arange(40))
  assert result['r_precision'] == 1.0
  assert result['num_generated_images'] == 40
  for key in ('fid_skipped', 'inception_score_skipped'):
    assert features.WEIGHTS_FILE in result[key]
  assert 'fid' not in result
  with pytest.raises(errors.ConfigError, match='unknown'):
    suite.generated_image_metrics(
        _eval_config(metrics=('fid', 'clip')), _images(14, 4, size=4),
        image_features=text[:4], text_features=text[:4], class_ids=np.arange(4))


def test_suite_computes_fid_and_is_when_configured(monkeypatch, tmp_path):
  monkeypatch.setattr(suite, '_extractor', lambda *args: _FakeExtractor())
  images = _images(15, 40, size=4)
  features_ = images.reshape(40, -1)[:, :6].astype(np.float64)
  reference = np.random.default_rng(16).normal(100, 30, size=(50, 6))
  stats = fid.save_stats(tmp_path / 'ref.npz', *fid.statistics(reference))
  config = _eval_config(inception_weights='anything', fid_stats=stats,
                        metrics=('fid', 'is'))
  result = suite.generated_image_metrics(
      config, images, image_features=features_, text_features=features_,
      class_ids=np.arange(40))
  assert result['fid'] == pytest.approx(_reference_fid(features_, reference),
                                        rel=1e-6)
  want_is = inception_score.inception_score_from_logits(features_[:, :3])
  assert (result['inception_score'],
          result['inception_score_std']) == pytest.approx(want_is)
  assert 'r_precision' not in result

  config.fid_stats = str(tmp_path / 'missing.npz')
  result = suite.generated_image_metrics(
      config, images, image_features=features_, text_features=features_,
      class_ids=np.arange(40))
  assert 'No FID statistics file' in result['fid_skipped']
  assert 'inception_score' in result


def test_streamed_batches_give_the_metrics_of_all_images_at_once(monkeypatch, tmp_path):
  """What the GAN evaluation does: uneven batches in, a limit, no images kept."""
  calls = []

  class _Recording(_FakeExtractor):
    def iterate(self, batches):
      batches = list(batches)
      calls.extend(len(b) for b in batches)
      return super().iterate(batches)

  monkeypatch.setattr(suite, '_extractor', lambda *args: _Recording())
  images = _images(17, 40, size=4)
  reference = np.random.default_rng(18).normal(100, 30, size=(50, 6))
  config = _eval_config(inception_weights='anything', metrics=('fid', 'is'),
                        fid_stats=fid.save_stats(tmp_path / 'ref.npz',
                                                 *fid.statistics(reference)))
  stream = suite.InceptionStream(config, limit=37)
  for start, stop in ((0, 3), (3, 8), (8, 15), (15, 40)):
    stream.add(images[start:stop])
  text = np.zeros((37, 2))
  streamed = suite.generated_image_metrics(
      config, image_features=text, text_features=text, class_ids=np.arange(37),
      inception=stream)
  at_once = suite.generated_image_metrics(
      config, images[:37], image_features=text, text_features=text,
      class_ids=np.arange(37))
  assert streamed['fid'] == pytest.approx(at_once['fid'], rel=1e-9)
  assert streamed['inception_score'] == pytest.approx(at_once['inception_score'], rel=1e-9)
  # Multiples of the Inception batch (4) while feeding, up to the limit; the
  # 37th image alone at the end. Then the at-once call, the same way.
  assert calls == [8, 4, 24, 1, 36, 1]
