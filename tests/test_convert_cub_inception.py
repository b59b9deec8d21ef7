"""StackGAN's CUB Inception-Score classifier: TF-slim checkpoint -> Flax -> IS.

The truth is the old TF-slim Inception-v3 (tensorflow/models
inception/inception/slim), rebuilt below in TF eager from its description:
variable scopes, unnamed convs named Conv, Conv_1, ... in creation order per
scope, conv -> BatchNorm without gamma (eps 1e-3) -> ReLU, 3x3 stride-1 'SAME'
average pools (TF leaves the padding out of the count) in every block, a
VALID average pool over the last map, then logits with a bias. Its variables
are random, created as the forward pass meets them, and the BatchNorm
statistics are calibrated on the test batch, then perturbed. Every variable is
stored twice, as `NAME` and, with other values, as
`NAME/ExponentialMovingAverage`; the forward pass uses the averages, as the
official script restores them. The checkpoint is written with TF's own save
ops (V1, the format of 2016-era savers, for the full model; V2 for the
reader), then converted by `kinds.convert_file`, what `python -m
t2ijax.convert --kind=cub_inception` calls (the command line itself is run
once, on its error path, to keep the file fast).
"""

import collections
import contextlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.special

from t2ijax import errors
from t2ijax.convert import kinds
from t2ijax.convert import tf_slim_inception
from t2ijax.encoders import inception
from t2ijax.evaluation import inception_score
from t2ijax.evaluation import suite
from tests import closeness

tf = pytest.importorskip('tensorflow')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMA = '/ExponentialMovingAverage'
NUM_CLASSES = 50  # CUB; the network has one more output, the background
_BATCH = 2
_SIZE = 299

# ---------------------------------------------------------------------------
# TF-slim reference, TF eager.
# ---------------------------------------------------------------------------


class _SlimReference:
  """Creates slim's variables as the forward pass meets them; applies them."""

  def __init__(self, seed):
    self.rng = np.random.default_rng(seed)
    self.values = {}  # checkpoint name -> float32 array
    self._scopes = []
    self._unnamed = collections.Counter()  # scope -> convs named so far

  @contextlib.contextmanager
  def scope(self, name):
    self._scopes.append(name)
    yield
    self._scopes.pop()

  def _store(self, name, ema, raw):
    self.values[name + EMA] = np.asarray(ema, np.float32)
    self.values[name] = np.asarray(raw, np.float32)
    return self.values[name + EMA]

  def conv(self, x, out, kernel, stride=1, padding='SAME', name=None):
    """slim's conv2d with batch_norm_params: no bias, BN without gamma, ReLU."""
    parent = '/'.join(self._scopes)
    if name is None:
      count = self._unnamed[parent]
      self._unnamed[parent] += 1
      name = 'Conv' if count == 0 else f'Conv_{count}'
    scope = f'{parent}/{name}' if parent else name
    kh, kw = kernel
    shape = (kh, kw, int(x.shape[-1]), out)
    w = self.rng.normal(0, np.sqrt(2.0 / np.prod(shape[:3])), shape)
    w = self._store(f'{scope}/weights', w,
                    w * self.rng.uniform(0.5, 1.5, shape))
    y = tf.nn.conv2d(x, w, stride, padding)
    mean, var = (t.numpy() for t in tf.nn.moments(y, [0, 1, 2]))
    std = np.sqrt(var)
    bn = f'{scope}/BatchNorm'
    mean = self._store(f'{bn}/moving_mean',
                       mean + 0.2 * std * self.rng.normal(size=out),
                       mean + std * self.rng.normal(size=out))
    var = self._store(f'{bn}/moving_variance',
                      var * self.rng.uniform(0.5, 2.0, out),
                      var * self.rng.uniform(2.0, 4.0, out))
    beta = self._store(f'{bn}/beta', self.rng.normal(0, 0.3, out),
                       self.rng.normal(0, 0.3, out))
    y = tf.nn.batch_normalization(y, mean, var, beta, None, 1e-3)
    return tf.nn.relu(y)

  def logits(self, x, num_outputs):
    w = self.rng.normal(0, 3 / np.sqrt(x.shape[-1]), (x.shape[-1], num_outputs))
    w = self._store('logits/logits/weights', w,
                    w + self.rng.normal(size=w.shape))
    b = self._store('logits/logits/biases', self.rng.normal(size=num_outputs),
                    self.rng.normal(size=num_outputs))
    return tf.matmul(x, w) + b


def _avg_same(x):
  return tf.nn.avg_pool2d(x, 3, 1, 'SAME')  # padding excluded from the count


def _max_valid(x):
  return tf.nn.max_pool2d(x, 3, 2, 'VALID')


def _block_35(ref, x, pool_features):
  with ref.scope('branch1x1'):
    b1 = ref.conv(x, 64, (1, 1))
  with ref.scope('branch5x5'):
    b5 = ref.conv(ref.conv(x, 48, (1, 1)), 64, (5, 5))
  with ref.scope('branch3x3dbl'):
    b3 = ref.conv(ref.conv(ref.conv(x, 64, (1, 1)), 96, (3, 3)), 96, (3, 3))
  with ref.scope('branch_pool'):
    bp = ref.conv(_avg_same(x), pool_features, (1, 1))
  return tf.concat([b1, b5, b3, bp], 3)


def _reduce_35(ref, x):
  with ref.scope('branch3x3'):
    b3 = ref.conv(x, 384, (3, 3), stride=2, padding='VALID')
  with ref.scope('branch3x3dbl'):
    bd = ref.conv(ref.conv(x, 64, (1, 1)), 96, (3, 3))
    bd = ref.conv(bd, 96, (3, 3), stride=2, padding='VALID')
  with ref.scope('branch_pool'):
    bp = _max_valid(x)
  return tf.concat([b3, bd, bp], 3)


def _block_17(ref, x, width):
  with ref.scope('branch1x1'):
    b1 = ref.conv(x, 192, (1, 1))
  with ref.scope('branch7x7'):
    b7 = ref.conv(x, width, (1, 1))
    b7 = ref.conv(ref.conv(b7, width, (1, 7)), 192, (7, 1))
  with ref.scope('branch7x7dbl'):
    bd = ref.conv(x, width, (1, 1))
    for kernel in ((7, 1), (1, 7), (7, 1)):
      bd = ref.conv(bd, width, kernel)
    bd = ref.conv(bd, 192, (1, 7))
  with ref.scope('branch_pool'):
    bp = ref.conv(_avg_same(x), 192, (1, 1))
  return tf.concat([b1, b7, bd, bp], 3)


def _reduce_17(ref, x):
  with ref.scope('branch3x3'):
    b3 = ref.conv(ref.conv(x, 192, (1, 1)), 320, (3, 3), stride=2,
                  padding='VALID')
  with ref.scope('branch7x7x3'):
    b7 = ref.conv(ref.conv(ref.conv(x, 192, (1, 1)), 192, (1, 7)), 192, (7, 1))
    b7 = ref.conv(b7, 192, (3, 3), stride=2, padding='VALID')
  with ref.scope('branch_pool'):
    bp = _max_valid(x)
  return tf.concat([b3, b7, bp], 3)


def _block_8(ref, x):
  with ref.scope('branch1x1'):
    b1 = ref.conv(x, 320, (1, 1))
  with ref.scope('branch3x3'):
    b3 = ref.conv(x, 384, (1, 1))
    b3 = tf.concat([ref.conv(b3, 384, (1, 3)), ref.conv(b3, 384, (3, 1))], 3)
  with ref.scope('branch3x3dbl'):
    bd = ref.conv(ref.conv(x, 448, (1, 1)), 384, (3, 3))
    bd = tf.concat([ref.conv(bd, 384, (1, 3)), ref.conv(bd, 384, (3, 1))], 3)
  with ref.scope('branch_pool'):
    bp = ref.conv(_avg_same(x), 192, (1, 1))
  return tf.concat([b1, b3, bd, bp], 3)


def _slim_inception_v3(ref, images, num_outputs):
  x = ref.conv(images, 32, (3, 3), stride=2, padding='VALID', name='conv0')
  x = ref.conv(x, 32, (3, 3), padding='VALID', name='conv1')
  x = ref.conv(x, 64, (3, 3), padding='SAME', name='conv2')
  x = _max_valid(x)
  x = ref.conv(x, 80, (1, 1), padding='VALID', name='conv3')
  x = ref.conv(x, 192, (3, 3), padding='VALID', name='conv4')
  x = _max_valid(x)
  for scope, pool_features in (('mixed_35x35x256a', 32),
                               ('mixed_35x35x288a', 64),
                               ('mixed_35x35x288b', 64)):
    with ref.scope(scope):
      x = _block_35(ref, x, pool_features)
  with ref.scope('mixed_17x17x768a'):
    x = _reduce_35(ref, x)
  for scope, width in (('mixed_17x17x768b', 128), ('mixed_17x17x768c', 160),
                       ('mixed_17x17x768d', 160), ('mixed_17x17x768e', 192)):
    with ref.scope(scope):
      x = _block_17(ref, x, width)
  with ref.scope('mixed_17x17x1280a'):
    x = _reduce_17(ref, x)
  for scope in ('mixed_8x8x2048a', 'mixed_8x8x2048b'):
    with ref.scope(scope):
      x = _block_8(ref, x)
  pool = tf.nn.avg_pool2d(x, x.shape[1:3], 1, 'VALID')  # slim's logits/pool
  return ref.logits(tf.reshape(pool, (x.shape[0], -1)), num_outputs)


def _save(prefix, values, version):
  os.makedirs(os.path.dirname(prefix), exist_ok=True)
  names = sorted(values)
  tensors = [values[n] for n in names]
  if version == 1:
    tf.raw_ops.Save(filename=prefix, tensor_names=names, data=tensors)
  else:
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                      shape_and_slices=[''] * len(names), tensors=tensors)
  return prefix


@pytest.fixture(scope='module')
def slim(tmp_path_factory):
  """The reference's checkpoint (V1), its inputs and its logits."""
  images = np.random.default_rng(0).uniform(
      -1, 1, (_BATCH, _SIZE, _SIZE, 3)).astype(np.float32)
  ref = _SlimReference(seed=1)
  logits = _slim_inception_v3(ref, tf.constant(images), NUM_CLASSES + 1)
  values = dict(ref.values)
  # What a real training checkpoint also holds, none of it read.
  extra = {'aux_logits/FC/weights': np.ones((768, NUM_CLASSES + 1), np.float32),
           'aux_logits/proj/weights': np.ones((1, 1, 768, 128), np.float32),
           'conv0/weights/RMSProp': np.ones((3, 3, 3, 32), np.float32),
           'global_step': np.array(5000, np.int64)}
  extra.update({k + EMA: v for k, v in extra.items() if k.startswith('aux')})
  directory = tmp_path_factory.mktemp('birds_valid299')
  prefix = _save(str(directory / 'model.ckpt-5000'), {**values, **extra}, 1)
  return {'values': values, 'prefix': prefix, 'images': images,
          'logits': logits.numpy()}


def _run_cli(*args):
  result = subprocess.run([sys.executable, '-m', 't2ijax.convert', *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
  return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope='module')
def converted(slim, tmp_path_factory):
  """What `python -m t2ijax.convert --kind=cub_inception` writes (its call)."""
  dst = str(tmp_path_factory.mktemp('cub_inception') / 'converted')
  kinds.convert_file('cub_inception', slim['prefix'], dst, num_classes='infer')
  return dst


@pytest.fixture(scope='module')
def classifier(converted):
  """(model, variables, info, jitted apply) of the converted directory."""
  model, variables, info = kinds.load(converted)
  return model, variables, info, jax.jit(model.apply)


_assert_close = closeness.assert_close_to_scale


def _tree(variables):
  return jax.tree.map(np.asarray, variables)


def test_converted_classifier_matches_the_tf_slim_network(slim, classifier):
  _, variables, info, apply = classifier
  assert info['kind'] == 'cub_inception'
  assert info['model'] == {'flavor': 'tf_slim', 'num_classes': NUM_CLASSES + 1}
  assert [s['file'] for s in info['sources']['src']] == ['model.ckpt-5000']
  assert 'scale' not in variables['params']['Mixed_7c']['branch_pool']['bn']

  got = np.asarray(apply(variables, jnp.asarray(slim['images']))['logits'])
  want = slim['logits']
  assert np.ptp(want[:, 1:], axis=1).min() > 1, 'a flat softmax proves little'
  _assert_close(got, want, 'logits')
  _assert_close(scipy.special.softmax(got[:, 1:], axis=1),
                scipy.special.softmax(want[:, 1:], axis=1),
                'predictions = softmax(logits[:, 1:])')

  # The averages are what was read: the trained values give other logits.
  raw_only = {k: v for k, v in slim['values'].items() if not k.endswith(EMA)}
  raw_variables, fell_back = tf_slim_inception.variables_from_checkpoint(
      raw_only)
  assert len(fell_back) == 378
  raw_logits = np.asarray(apply(raw_variables, jnp.asarray(slim['images']))
                          ['logits'])
  assert np.max(np.abs(raw_logits - want)) > 100 * 1e-4 * np.max(np.abs(want))


def test_checkpoint_v2_and_the_ways_to_name_it_read_the_same(slim, tmp_path):
  values = {k: v for k, v in slim['values'].items() if k.startswith('conv0/')}
  v1 = tf_slim_inception.read_checkpoint(slim['prefix'])
  prefix = _save(str(tmp_path / 'v2' / 'model.ckpt-5000'), values, 2)
  with open(tmp_path / 'v2' / 'checkpoint', 'w') as f:
    f.write('model_checkpoint_path: "model.ckpt-5000"\n')
  for path in (prefix, prefix + '.index', prefix + '.data-00000-of-00001',
               str(tmp_path / 'v2')):
    v2 = tf_slim_inception.read_checkpoint(path)
    assert set(v2) == set(values)
    for name in values:
      np.testing.assert_array_equal(v2[name], v1[name])
  assert [os.path.basename(f) for f in
          tf_slim_inception.checkpoint_files(prefix)] == [
              'model.ckpt-5000.index', 'model.ckpt-5000.data-00000-of-00001']


def test_missing_averages_fall_back_to_the_trained_values(slim):
  values = dict(slim['values'])
  names = ['conv0/weights', 'logits/logits/biases',
           'mixed_8x8x2048b/branch3x3dbl/Conv_3/BatchNorm/beta']
  for name in names:
    del values[name + EMA]
  variables, fell_back = tf_slim_inception.variables_from_checkpoint(values)
  assert sorted(fell_back) == sorted(names)
  params = variables['params']
  np.testing.assert_array_equal(params['Conv2d_1a_3x3']['conv']['kernel'],
                                values['conv0/weights'])
  np.testing.assert_array_equal(
      params['Mixed_7c']['branch3x3dbl_3b']['bn']['bias'],
      values['mixed_8x8x2048b/branch3x3dbl/Conv_3/BatchNorm/beta'])
  np.testing.assert_array_equal(params['fc']['bias'],
                                values['logits/logits/biases'])
  np.testing.assert_array_equal(  # the others still from the averages
      variables['batch_stats']['Conv2d_1a_3x3']['bn']['var'],
      values['conv0/BatchNorm/moving_variance' + EMA])


def test_missing_and_misshaped_variables_are_named(slim):
  values = dict(slim['values'])
  missing = 'mixed_17x17x768c/branch7x7dbl/Conv_3/BatchNorm/moving_mean'
  del values[missing], values[missing + EMA]
  wrong = 'mixed_8x8x2048a/branch3x3/Conv_1/weights' + EMA
  values[wrong] = np.zeros((3, 1, 384, 384), np.float32)
  with pytest.raises(errors.CheckpointError) as error:
    tf_slim_inception.variables_from_checkpoint(values)
  message = str(error.value)
  assert f'missing variables (1):\n    {missing}{EMA} (or {missing})' in message
  assert (f'wrong shape (1):\n    {wrong}: has (3, 1, 384, 384), expected '
          '(1, 3, 384, 384)') in message
  assert 'model.ckpt-5000' in message  # the fix


def test_num_classes_is_checked_against_the_logits(slim, tmp_path):
  values = slim['values']
  with pytest.raises(errors.CheckpointError,
                     match=r'has 51 outputs.*not num_classes=20.*'
                     r'--num_classes=50'):
    tf_slim_inception.variables_from_checkpoint(values, num_classes=20)
  for bad in (0, 'fifty'):
    with pytest.raises(errors.ConfigError, match='num_classes'):
      tf_slim_inception.variables_from_checkpoint(values, num_classes=bad)
  variables, _ = tf_slim_inception.variables_from_checkpoint(
      values, num_classes=NUM_CLASSES)
  assert variables['params']['fc']['kernel'].shape == (2048, NUM_CLASSES + 1)
  with pytest.raises(errors.ConfigError, match='--num_classes'):
    kinds.convert_file('cub_inception', slim['prefix'], str(tmp_path / 'a'),
                       num_classes=None)
  with pytest.raises(errors.CheckpointError, match='--num_classes=50'):
    kinds.convert_file('cub_inception', slim['prefix'], str(tmp_path / 'b'),
                       num_classes=20)
  assert not os.path.exists(tmp_path / 'a')
  assert not os.path.exists(tmp_path / 'b')


def test_a_missing_checkpoint_names_the_path_and_the_layout(tmp_path):
  src = str(tmp_path / 'birds_valid299' / 'model.ckpt-5000')
  # Through the command line: the kind, its flags, the error and exit code.
  code, output = _run_cli('--kind=cub_inception', f'--src={src}',
                          f'--dst={tmp_path / "out"}', '--num_classes=50')
  assert code == 2, output
  assert f"No TF checkpoint at '{src}'" in output, output
  assert 'model.ckpt-5000.index' in output
  assert not os.path.exists(tmp_path / 'out')
  with pytest.raises(errors.CheckpointError, match='`checkpoint` file'):
    tf_slim_inception.read_checkpoint(tmp_path)


# ---------------------------------------------------------------------------
# The evaluation's Inception Score with eval.is_classifier.
# ---------------------------------------------------------------------------


def _eval_config(**fields):
  base = dict(metrics=('is',), inception_weights='', fid_stats='',
              is_classifier='', inception_batch_size=8)
  base.update(fields)
  return ml_collections.ConfigDict(base)


def test_stackgan_preprocess_is_scipy_imresize_then_scaled():
  """scipy.misc.imresize(bilinear) is PIL's resize of the uint8 image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  for size in (64, 256):
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    got = np.asarray(inception.stackgan_is_preprocess(jnp.asarray(image[None])))
    want = np.asarray(Image.fromarray(image).resize((299, 299), Image.BILINEAR),
                      np.float32)[None] / 127.5 - 1
    levels = np.abs(got - want) * 127.5
    assert got.shape == (1, 299, 299, 3)
    # PIL's fixed-point weights move a few values by one level; without the
    # uint8 rounding between the passes a fifth of them would differ.
    assert levels.max() < 1 + 1e-3, size
    assert np.mean(levels > 0.5) < 0.01, size


def _tinted_images(count, seed):
  """Colour casts and contrasts that the random classifier tells apart."""
  rng = np.random.default_rng(seed)
  tint = rng.uniform(0, 255, (count, 1, 1, 3))
  contrast = rng.uniform(0, 1, (count, 1, 1, 1))
  noise = rng.normal(0, 80, (count, 64, 64, 3))
  return np.clip(tint + contrast * noise, 0, 255).astype(np.uint8)


def test_cub_is_on_the_streaming_path_is_the_formula_on_its_predictions(
    converted, classifier):
  _, variables, _, apply = classifier
  images = _tinted_images(20, seed=4)  # 10 splits of 2
  stream = suite.InceptionStream(_eval_config(is_classifier=converted))
  assert stream.extractor is None and stream.classifier is not None
  for start, stop in ((0, 3), (3, 12), (12, 20)):
    stream.add(images[start:stop])
  result = stream.metrics()
  assert 'fid_skipped' not in result and 'inception_score_skipped' not in result

  # What the stream scored: the classifier's logits without class 0, in order.
  logits = np.concatenate(stream.logits)
  assert logits.shape == (20, NUM_CLASSES)
  for rows in (slice(0, 2), slice(18, 20)):  # in the first and last batches
    direct = apply(variables, inception.stackgan_is_preprocess(
        jnp.asarray(images[rows])))['logits']
    _assert_close(logits[rows], np.asarray(direct)[:, 1:], f'rows {rows}')
  probs = scipy.special.softmax(logits.astype(np.float64), axis=1)
  want = inception_score.inception_score_from_probs(probs)
  assert want[0] > 1.2, 'an IS of ~1 proves little'
  assert (result['inception_score'],
          result['inception_score_std']) == pytest.approx(want, rel=1e-6)


def test_a_bad_is_classifier_is_reported_with_the_key_and_the_fix(tmp_path):
  not_converted = tmp_path / 'empty'
  not_converted.mkdir()
  other_kind = str(tmp_path / 'other')
  kinds.save(other_kind, 'fid_inception', {'params': {'x': np.zeros(1)}},
             {'flavor': 'fid', 'num_classes': 1008}, {})
  corrupt = str(tmp_path / 'corrupt')
  kinds.save(corrupt, 'cub_inception', {'params': {'x': np.zeros(1)}},
             {'flavor': 'tf_slim', 'num_classes': 51}, {})
  with open(os.path.join(corrupt, kinds.VARIABLES_FILE), 'wb') as f:
    f.write(b'\x00not msgpack')
  wrong_tree = str(tmp_path / 'wrong_tree')
  kinds.save(wrong_tree, 'cub_inception', {'params': {'x': np.zeros(1)}},
             {'flavor': 'tf_slim', 'num_classes': 51}, {})
  for path, why in ((str(tmp_path / 'nowhere'), 'No converted classifier'),
                    (str(not_converted), 'no converted variables'),
                    (other_kind, "'fid_inception', not the cub_inception"),
                    (corrupt, 'could not be read'),
                    (wrong_tree, 'does not hold the classifier its')):
    result = suite.InceptionStream(_eval_config(is_classifier=path)).metrics()
    reason = result['inception_score_skipped']
    assert reason.startswith(f'eval.is_classifier={path!r}: '), reason
    assert why in reason, reason
    assert '--kind=cub_inception' in reason, reason
  with open(os.path.join(other_kind, kinds.INFO_FILE)) as f:
    assert json.load(f)['kind'] == 'fid_inception'
