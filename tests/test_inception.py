"""Flax Inception-v3 == a PyTorch Inception-v3 through the checkpoint converter.

torchvision is not installable here, so the PyTorch side is rebuilt below from
the architecture description (torchvision block names, pytorch-fid pooling).
Weights are random and the BatchNorm running statistics are calibrated on a
batch and then perturbed, so BN is really exercised with non-trivial values.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
tnn = torch.nn
F = torch.nn.functional

# pylint: disable=g-import-not-at-top
from t2ijax.convert import torch_inception
from t2ijax.encoders import inception
from t2ijax.errors import CheckpointError
from t2ijax.errors import ConfigError
from tests import closeness
# pylint: enable=g-import-not-at-top

# Any size >= 75 runs the same layers; 139 costs a fifth of 299's FLOPs and
# still leaves 3x3 maps at Mixed_7, where padded and unpadded pools differ.
_SIZE = 139
_BATCH = 2

# ---------------------------------------------------------------------------
# PyTorch reference model (NCHW), written from the architecture description.
# ---------------------------------------------------------------------------


class _TorchConvBN(tnn.Module):

  def __init__(self, cin, cout, kernel, stride=1, padding=0):
    super().__init__()
    self.conv = tnn.Conv2d(cin, cout, kernel, stride=stride, padding=padding,
                           bias=False)
    self.bn = tnn.BatchNorm2d(cout, eps=1e-3)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _torch_pool_3x3_same(x, kind):
  if kind == 'max':
    return F.max_pool2d(x, 3, stride=1, padding=1)
  return F.avg_pool2d(x, 3, stride=1, padding=1,
                      count_include_pad=(kind == 'avg_incl'))


class _TorchA(tnn.Module):

  def __init__(self, cin, pool_features, pool_kind):
    super().__init__()
    self.pool_kind = pool_kind
    self.branch1x1 = _TorchConvBN(cin, 64, 1)
    self.branch5x5_1 = _TorchConvBN(cin, 48, 1)
    self.branch5x5_2 = _TorchConvBN(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = _TorchConvBN(cin, 64, 1)
    self.branch3x3dbl_2 = _TorchConvBN(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = _TorchConvBN(96, 96, 3, padding=1)
    self.branch_pool = _TorchConvBN(cin, pool_features, 1)

  def forward(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(_torch_pool_3x3_same(x, self.pool_kind))
    return torch.cat([self.branch1x1(x), b5, b3, bp], 1)


class _TorchB(tnn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = _TorchConvBN(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = _TorchConvBN(cin, 64, 1)
    self.branch3x3dbl_2 = _TorchConvBN(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = _TorchConvBN(96, 96, 3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class _TorchC(tnn.Module):

  def __init__(self, cin, c7, pool_kind):
    super().__init__()
    self.pool_kind = pool_kind
    self.branch1x1 = _TorchConvBN(cin, 192, 1)
    self.branch7x7_1 = _TorchConvBN(cin, c7, 1)
    self.branch7x7_2 = _TorchConvBN(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = _TorchConvBN(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = _TorchConvBN(cin, c7, 1)
    self.branch7x7dbl_2 = _TorchConvBN(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = _TorchConvBN(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = _TorchConvBN(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = _TorchConvBN(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = _TorchConvBN(cin, 192, 1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f'branch7x7dbl_{i}')(bd)
    bp = self.branch_pool(_torch_pool_3x3_same(x, self.pool_kind))
    return torch.cat([self.branch1x1(x), b7, bd, bp], 1)


class _TorchD(tnn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = _TorchConvBN(cin, 192, 1)
    self.branch3x3_2 = _TorchConvBN(192, 320, 3, stride=2)
    self.branch7x7x3_1 = _TorchConvBN(cin, 192, 1)
    self.branch7x7x3_2 = _TorchConvBN(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = _TorchConvBN(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = _TorchConvBN(192, 192, 3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = x
    for i in range(1, 5):
      b7 = getattr(self, f'branch7x7x3_{i}')(b7)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _TorchE(tnn.Module):

  def __init__(self, cin, pool_kind):
    super().__init__()
    self.pool_kind = pool_kind
    self.branch1x1 = _TorchConvBN(cin, 320, 1)
    self.branch3x3_1 = _TorchConvBN(cin, 384, 1)
    self.branch3x3_2a = _TorchConvBN(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = _TorchConvBN(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = _TorchConvBN(cin, 448, 1)
    self.branch3x3dbl_2 = _TorchConvBN(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = _TorchConvBN(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = _TorchConvBN(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = _TorchConvBN(cin, 192, 1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    bp = self.branch_pool(_torch_pool_3x3_same(x, self.pool_kind))
    return torch.cat([self.branch1x1(x), b3, bd, bp], 1)


class _TorchInception(tnn.Module):
  """Inception-v3 trunk + fc; flavor 'fid' swaps the A/C/E branch pools."""

  def __init__(self, flavor, num_classes):
    super().__init__()
    fid = flavor == 'fid'
    avg = 'avg_excl' if fid else 'avg_incl'
    last_pool = 'max' if fid else 'avg_incl'
    self.Conv2d_1a_3x3 = _TorchConvBN(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = _TorchConvBN(32, 32, 3)
    self.Conv2d_2b_3x3 = _TorchConvBN(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = _TorchConvBN(64, 80, 1)
    self.Conv2d_4a_3x3 = _TorchConvBN(80, 192, 3)
    self.Mixed_5b = _TorchA(192, 32, avg)
    self.Mixed_5c = _TorchA(256, 64, avg)
    self.Mixed_5d = _TorchA(288, 64, avg)
    self.Mixed_6a = _TorchB(288)
    self.Mixed_6b = _TorchC(768, 128, avg)
    self.Mixed_6c = _TorchC(768, 160, avg)
    self.Mixed_6d = _TorchC(768, 160, avg)
    self.Mixed_6e = _TorchC(768, 192, avg)
    self.Mixed_7a = _TorchD(768)
    self.Mixed_7b = _TorchE(1280, avg)
    self.Mixed_7c = _TorchE(2048, last_pool)
    self.fc = tnn.Linear(2048, num_classes)

  def forward(self, x):
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, stride=2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, 3, stride=2)
    for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e'):
      x = getattr(self, f'Mixed_{name}')(x)
    mixed_6e = x
    x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
    pool3 = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return {'mixed_6e': mixed_6e, 'pool3': pool3, 'logits': self.fc(pool3)}


def _randomised_torch_inception(flavor, num_classes, seed):
  """Random weights; BN stats from a calibration batch, then perturbed.

  Calibrating keeps activations O(1) through ~40 layers; the perturbation
  makes running stats differ from batch stats, so eval and train differ.
  """
  torch.manual_seed(seed)
  model = _TorchInception(flavor, num_classes)
  bns = [m for m in model.modules() if isinstance(m, tnn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:
      bn.weight.uniform_(0.5, 1.5)
      bn.bias.normal_(0.0, 0.2)
      bn.momentum = None  # Cumulative average: one batch sets the stats.
    model.train()
    model(torch.rand(2, 3, _SIZE, _SIZE) * 2 - 1)
    for bn in bns:
      std = bn.running_var.sqrt()
      bn.running_mean.add_(0.2 * std * torch.randn_like(std))
      bn.running_var.mul_(torch.empty_like(std).uniform_(0.6, 1.6))
      bn.momentum = 0.1
      bn.num_batches_tracked.zero_()
  return model.eval()


def _nhwc(t):
  t = t.detach().numpy()
  return np.transpose(t, (0, 2, 3, 1)) if t.ndim == 4 else t


_assert_close = closeness.assert_close_to_scale


@pytest.fixture(scope='module')
def torch_models():
  """One randomised PyTorch model per flavour; shared, so never mutate."""
  return {'torchvision': _randomised_torch_inception('torchvision', 1000, 0),
          'fid': _randomised_torch_inception('fid', 1008, 1)}


@pytest.fixture(scope='module')
def images_nchw():
  generator = torch.Generator().manual_seed(123)
  return torch.rand(_BATCH, 3, _SIZE, _SIZE, generator=generator) * 2 - 1


@pytest.mark.parametrize('flavor,num_classes', [('torchvision', 1000),
                                                ('fid', 1008)])
def test_matches_torch_through_saved_state_dict(flavor, num_classes, tmp_path,
                                                torch_models, images_nchw):
  torch_model = torch_models[flavor]
  path = tmp_path / 'inception.pth'
  torch.save(torch_model.state_dict(), path)

  state_dict = torch_inception.load_state_dict(path)
  variables = torch_inception.inception_variables_from_state_dict(
      state_dict, flavor)
  model = inception.InceptionV3(flavor=flavor, num_classes=num_classes)
  images = jnp.asarray(_nhwc(images_nchw))
  got = jax.tree.map(np.asarray, jax.jit(model.apply)(variables, images))
  with torch.no_grad():
    want = torch_model(images_nchw)

  assert got['mixed_6e'].shape == (_BATCH, 7, 7, 768)
  assert got['mixed_7c'].shape == (_BATCH, 3, 3, 2048)
  for name in ('mixed_6e', 'pool3', 'logits'):
    _assert_close(got[name], _nhwc(want[name]), f'{flavor} {name}')


def test_flavors_differ_beyond_the_tolerance(torch_models, images_nchw):
  """Same weights, other flavour: pooling shows, so the torch test can fail."""
  variables = torch_inception.inception_variables_from_state_dict(
      torch_models['fid'].state_dict(), 'fid')
  images = jnp.asarray(_nhwc(images_nchw[:1]))
  pool3 = {flavor: np.asarray(jax.jit(inception.InceptionV3(flavor).apply)(
      variables, images)['pool3']) for flavor in inception.FLAVORS}
  difference = np.max(np.abs(pool3['fid'] - pool3['torchvision']))
  assert difference > 100 * 1e-4 * np.max(np.abs(pool3['fid']))


def test_train_mode_matches_torch_and_updates_running_stats(torch_models,
                                                           images_nchw):
  torch_model = copy.deepcopy(torch_models['torchvision'])
  bn = torch_model.Mixed_7c.branch_pool.bn
  old_var = bn.running_var.clone().numpy()
  variables = torch_inception.inception_variables_from_state_dict(
      torch_model.state_dict(), 'torchvision')
  model = inception.InceptionV3('torchvision', num_classes=1000)
  got, updates = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
          variables, jnp.asarray(_nhwc(images_nchw)))
  torch_model.train()
  with torch.no_grad():
    want = torch_model(images_nchw)
  # Normalising by the statistics of only two images amplifies float
  # rounding (eval mode agrees to ~5e-6 of the range, train mode to ~1e-4);
  # a semantic slip such as the unbiased variance would be ~1e-3 here.
  _assert_close(got['mixed_6e'], _nhwc(want['mixed_6e']), 'train mixed_6e',
                rtol=3e-4)
  _assert_close(got['pool3'], _nhwc(want['pool3']), 'train pool3', rtol=3e-4)

  # Running stats: the mean follows torch; for the variance torch blends in
  # the unbiased batch variance and flax the biased one, N = batch * 3 * 3
  # (Mixed_7c is 3x3 at 139 px).
  flax_bn = updates['batch_stats']['Mixed_7c']['branch_pool']['bn']
  _assert_close(flax_bn['mean'], bn.running_mean.numpy(), 'running mean')
  n = _BATCH * 3 * 3
  torch_var = bn.running_var.numpy()
  expected_var = 0.9 * old_var + (torch_var - 0.9 * old_var) * (n - 1) / n
  _assert_close(flax_bn['var'], expected_var, 'running var')


def test_pytorch_fid_wrapper_names_are_translated(torch_models):
  state_dict = {k: v.numpy()
                for k, v in torch_models['fid'].state_dict().items()}
  prefixes = {  # pytorch-fid InceptionV3 wrapper: blocks.{b}.{i}
      'Conv2d_1a_3x3': 'blocks.0.0', 'Conv2d_2a_3x3': 'blocks.0.1',
      'Conv2d_2b_3x3': 'blocks.0.2', 'Conv2d_3b_1x1': 'blocks.1.0',
      'Conv2d_4a_3x3': 'blocks.1.1', 'Mixed_7a': 'blocks.3.0',
      'Mixed_7b': 'blocks.3.1', 'Mixed_7c': 'blocks.3.2',
      **{f'Mixed_{n}': f'blocks.2.{i}' for i, n in enumerate(
          ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e'))}}
  wrapped = {}
  for key, value in state_dict.items():
    module, rest = key.split('.', 1)
    if module != 'fc':  # The wrapper has no classifier.
      wrapped[f'{prefixes[module]}.{rest}'] = value
  assert len(wrapped) == 564

  direct = torch_inception.inception_variables_from_state_dict(
      {k: v for k, v in state_dict.items() if not k.startswith('fc.')}, 'fid')
  translated = torch_inception.inception_variables_from_state_dict(
      wrapped, 'fid')
  jax.tree.map(np.testing.assert_array_equal, translated, direct)
  assert 'fc' not in translated['params']


@pytest.fixture(scope='module')
def small_state_dict():
  """A full torchvision-layout state dict of zeros with the right shapes."""
  torch_model = _TorchInception('torchvision', 1000)
  return {k: np.zeros(v.shape, np.float32)
          for k, v in torch_model.state_dict().items()}


def test_converter_accepts_aux_logits_and_counters(small_state_dict):
  state_dict = dict(small_state_dict)
  state_dict['AuxLogits.fc.weight'] = np.zeros((1000, 768), np.float32)
  state_dict['module.Mixed_5b.branch1x1.bn.num_batches_tracked'] = np.zeros(())
  variables = torch_inception.inception_variables_from_state_dict(
      state_dict, 'torchvision')
  assert variables['params']['fc']['kernel'].shape == (2048, 1000)
  assert variables['params']['Mixed_5b']['branch1x1']['conv']['kernel'].shape \
      == (1, 1, 192, 64)


def test_converter_names_missing_key(small_state_dict):
  state_dict = dict(small_state_dict)
  del state_dict['Mixed_6c.branch7x7dbl_3.bn.running_var']
  with pytest.raises(CheckpointError,
                     match=r'(?s)missing.*Mixed_6c\.branch7x7dbl_3\.bn\.'
                     r'running_var'):
    torch_inception.inception_variables_from_state_dict(
        state_dict, 'torchvision')


def test_converter_names_misshaped_key(small_state_dict):
  state_dict = dict(small_state_dict)
  state_dict['Mixed_7b.branch3x3_2a.conv.weight'] = np.zeros(
      (384, 384, 3, 1), np.float32)
  with pytest.raises(CheckpointError,
                     match=r'(?s)shape.*Mixed_7b\.branch3x3_2a\.conv\.weight'
                     r'.*\(384, 384, 3, 1\).*\(384, 384, 1, 3\)'):
    torch_inception.inception_variables_from_state_dict(
        state_dict, 'torchvision')


def test_converter_names_unexpected_key(small_state_dict):
  state_dict = dict(small_state_dict)
  state_dict['emb_features.weight'] = np.zeros((256, 768, 1, 1), np.float32)
  with pytest.raises(CheckpointError,
                     match=r'(?s)unexpected.*emb_features\.weight'):
    torch_inception.inception_variables_from_state_dict(
        state_dict, 'torchvision')


def test_converter_rejects_fc_mismatch_with_requested_classes(
    small_state_dict):
  with pytest.raises(CheckpointError, match=r'(?s)unexpected.*fc\.weight'):
    torch_inception.inception_variables_from_state_dict(
        small_state_dict, 'torchvision', num_classes=None)
  with pytest.raises(CheckpointError, match=r'(?s)shape.*fc\.weight'):
    torch_inception.inception_variables_from_state_dict(
        small_state_dict, 'fid', num_classes=1008)


def test_load_inception_builds_the_matching_model(small_state_dict, tmp_path):
  path = tmp_path / 'zeros.pth'
  torch.save({k: torch.from_numpy(v) for k, v in small_state_dict.items()},
             path)
  model, variables = torch_inception.load_inception(path, 'fid')
  assert (model.flavor, model.num_classes) == ('fid', 1000)
  assert variables['batch_stats']['Conv2d_1a_3x3']['bn']['var'].shape == (32,)


def test_load_state_dict_names_missing_file(tmp_path):
  with pytest.raises(CheckpointError, match='nothing.pth'):
    torch_inception.load_state_dict(tmp_path / 'nothing.pth')


@pytest.mark.parametrize('flavor,num_classes,expected', [
    ('torchvision', None, 21_785_568),
    ('fid', None, 21_785_568),
    ('fid', 1008, 23_850_960),
])
def test_learnable_parameter_count(flavor, num_classes, expected):
  model = inception.InceptionV3(flavor=flavor, num_classes=num_classes)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, _SIZE, _SIZE, 3)))
  count = sum(int(np.prod(x.shape))
              for x in jax.tree.leaves(variables['params']))
  assert count == expected
  assert len(jax.tree.leaves(variables['batch_stats'])) == 94 * 2


@pytest.mark.parametrize('in_size,out_size', [((17, 23), (299, 299)),
                                              ((64, 64), (299, 299)),
                                              ((320, 300), (299, 299)),
                                              ((5, 7), (1, 3)),
                                              ((299, 299), (299, 299))])
def test_resize_bilinear_align_corners_matches_torch(in_size, out_size):
  x = torch.rand(2, 3, *in_size) * 2 - 1
  want = F.interpolate(x, size=out_size, mode='bilinear', align_corners=True)
  got = inception.resize_bilinear_align_corners(jnp.asarray(_nhwc(x)),
                                                out_size)
  # Bit-level agreement depends on torch's build (fused multiply-add);
  # 1e-5 still separates the two corner conventions by orders of magnitude.
  np.testing.assert_allclose(np.asarray(got), _nhwc(want), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize('in_size', [(64, 64), (128, 96), (512, 512),
                                     (299, 299), (300, 450)])
def test_fid_preprocess_matches_torch(in_size):
  x = torch.rand(2, 3, *in_size)
  want = F.interpolate(x, size=(299, 299), mode='bilinear',
                       align_corners=False) * 2 - 1
  got = inception.fid_preprocess(jnp.asarray(_nhwc(x)))
  assert got.shape == (2, 299, 299, 3)
  # Bit-level agreement depends on torch's build (fused multiply-add);
  # 1e-5 still separates the two corner conventions by orders of magnitude.
  np.testing.assert_allclose(np.asarray(got), _nhwc(want), rtol=1e-5,
                             atol=1e-5)


def test_unknown_flavor_is_rejected():
  with pytest.raises(ConfigError, match='flavor'):
    inception.InceptionV3(flavor='tf').init(jax.random.key(0),
                                            jnp.zeros((1, 75, 75, 3)))
  with pytest.raises(ConfigError, match='flavor'):
    torch_inception.inception_variables_from_state_dict({}, 'tf')
