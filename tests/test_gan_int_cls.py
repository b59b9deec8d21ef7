"""Tests of GAN-INT-CLS: networks against torch ones built from the reference, losses
against direct formulas, and a tiny train / eval step.

The torch G and D below are written from reference/stackgan_dfgan_family.md
§3.2-3.4 (the official main_cls_int.lua layout; conv layers without bias as
the official code zeroes them every step).
"""

import ml_collections
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from t2ijax import errors
from t2ijax.encoders import damsm as damsm_enc
from t2ijax.encoders import damsm_loader
from t2ijax.models import gan_int_cls as models
from t2ijax.trainers import gan_int_cls as trainer
from tests import tiny_configs


# --- torch reference networks ------------------------------------------------


class TorchBottleneck(torch.nn.Module):

  def __init__(self, channels, inner, act):
    super().__init__()
    nn = torch.nn
    self.branch = nn.Sequential(
        nn.Conv2d(channels, inner, 1, bias=False), nn.BatchNorm2d(inner), act(),
        nn.Conv2d(inner, inner, 3, 1, 1, bias=False), nn.BatchNorm2d(inner), act(),
        nn.Conv2d(inner, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
    self.act = act()

  def forward(self, x):
    return self.act(x + self.branch(x))


def _lrelu():
  return torch.nn.LeakyReLU(0.2)


class TorchG(torch.nn.Module):

  def __init__(self, ngf, nt, nz, txt):
    super().__init__()
    nn = torch.nn
    self.text = nn.Sequential(nn.Linear(txt, nt), _lrelu())
    self.net = nn.Sequential(
        nn.ConvTranspose2d(nz + nt, 8 * ngf, 4, 1, 0, bias=False), nn.BatchNorm2d(8 * ngf),
        TorchBottleneck(8 * ngf, 2 * ngf, nn.ReLU),
        nn.ConvTranspose2d(8 * ngf, 4 * ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * ngf),
        TorchBottleneck(4 * ngf, ngf, nn.ReLU),
        nn.ConvTranspose2d(4 * ngf, 2 * ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ngf),
        nn.ReLU(),
        nn.ConvTranspose2d(2 * ngf, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(),
        nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())

  def forward(self, z, t):
    x = torch.cat([z, self.text(t)], 1)[:, :, None, None]     # z first
    return self.net(x)


class TorchD(torch.nn.Module):

  def __init__(self, ndf, nt, txt):
    super().__init__()
    nn = torch.nn
    self.image = nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1, bias=False), _lrelu(),
        nn.Conv2d(ndf, 2 * ndf, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ndf), _lrelu(),
        nn.Conv2d(2 * ndf, 4 * ndf, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * ndf),
        nn.Conv2d(4 * ndf, 8 * ndf, 4, 2, 1, bias=False), nn.BatchNorm2d(8 * ndf),
        TorchBottleneck(8 * ndf, 2 * ndf, _lrelu))
    self.text = nn.Sequential(nn.Linear(txt, nt), nn.BatchNorm1d(nt), _lrelu())
    self.joint = nn.Sequential(
        nn.Conv2d(8 * ndf + nt, 8 * ndf, 1, bias=False), nn.BatchNorm2d(8 * ndf), _lrelu(),
        nn.Conv2d(8 * ndf, 1, 4, bias=False))

  def forward(self, x, t):
    h = self.image(x)
    t = self.text(t)[:, :, None, None].expand(-1, -1, 4, 4)
    return self.joint(torch.cat([h, t], 1)).view(-1)           # logits (Sigmoid in BCE)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _torch_count(module):
  return sum(p.numel() for p in module.parameters())


# --- weights torch -> flax ---------------------------------------------------


def _t(x):
  return np.asarray(x.detach().numpy())


def _conv(m):
  return {'kernel': _t(m.weight).transpose(2, 3, 1, 0)}


def _dense(m):
  return {'kernel': _t(m.weight).T, 'bias': _t(m.bias)}


def _bn(m):
  return ({'scale': _t(m.weight), 'bias': _t(m.bias)},
          {'mean': _t(m.running_mean), 'var': _t(m.running_var)})


def _put(params, stats, name, bn_module):
  params[name], stats[name] = _bn(bn_module)


def _bottleneck(m):
  b = m.branch
  params = {'conv0': _conv(b[0]), 'conv1': _conv(b[3]), 'conv2': _conv(b[6])}
  stats = {}
  for name, index in (('bn0', 1), ('bn1', 4), ('bn2', 7)):
    _put(params, stats, name, b[index])
  return params, stats


def g_variables(tg):
  n = tg.net
  params = {'text_fc': _dense(tg.text[0])}
  stats = {}
  for name, index in (('deconv0', 0), ('deconv1', 3), ('deconv2', 6), ('deconv3', 9),
                      ('deconv4', 12)):
    # ConvTranspose2d weights are (in, out, kh, kw): the same transpose gives
    # the (kh, kw, out, in) kernel of a transpose_kernel ConvTranspose.
    params[name] = _conv(n[index])
  for name, index in (('bn0', 1), ('bn1', 4), ('bn2', 7), ('bn3', 10)):
    _put(params, stats, name, n[index])
  params['res0'], stats['res0'] = _bottleneck(n[2])
  params['res1'], stats['res1'] = _bottleneck(n[5])
  return {'params': params, 'batch_stats': stats}


def d_variables(td):
  i = td.image
  image_p = {'conv0': _conv(i[0]), 'conv1': _conv(i[2]), 'conv2': _conv(i[5]),
             'conv3': _conv(i[7])}
  image_s = {}
  for name, index in (('bn1', 3), ('bn2', 6), ('bn3', 8)):
    _put(image_p, image_s, name, i[index])
  image_p['res'], image_s['res'] = _bottleneck(i[9])
  params = {'image': image_p, 'text_fc': _dense(td.text[0]),
            'joint_conv': _conv(td.joint[0]), 'out_conv': _conv(td.joint[3])}
  stats = {'image': image_s}
  _put(params, stats, 'text_bn', td.text[1])
  _put(params, stats, 'joint_bn', td.joint[1])
  return {'params': params, 'batch_stats': stats}


def _randomize(module, seed):
  """Non-trivial BN affine and running statistics, so eval mode is tested."""
  g = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
      with torch.no_grad():
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def _flax_shapes(module, *args):
  return jax.eval_shape(lambda: module.init(jax.random.key(0), *args))


# --- tests -------------------------------------------------------------------


def test_official_g_and_d_have_the_reference_parameter_counts_and_shapes():
  """ngf 128, ndf 64, nt 128, z 100, 1024-d text: counts equal the torch nets'."""
  g = _flax_shapes(models.Generator(ngf=128, nt=128), jnp.zeros((2, 100)), jnp.zeros((2, 1024)))
  d = _flax_shapes(models.Discriminator(ndf=64, nt=128), jnp.zeros((2, 64, 64, 3)),
                   jnp.zeros((2, 1024)))
  tg, td = TorchG(128, 128, 100, 1024), TorchD(64, 128, 1024)
  assert _count(g['params']) == _torch_count(tg) == 18_905_472
  assert _count(d['params']) == _torch_count(td) == 4_030_080
  # Every torch tensor has its flax counterpart with the converted shape.
  g_ref = jax.tree.map(np.shape, g_variables(tg))
  d_ref = jax.tree.map(np.shape, d_variables(td))
  assert jax.tree.map(lambda x: x.shape, flax.core.unfreeze(g)) == g_ref
  assert jax.tree.map(lambda x: x.shape, flax.core.unfreeze(d)) == d_ref
  assert g['params']['deconv0']['kernel'].shape == (4, 4, 1024, 228)   # [z, text]
  assert d['params']['joint_conv']['kernel'].shape == (1, 1, 512 + 128, 512)


@pytest.mark.parametrize('train', [False, True])
def test_flax_g_and_d_equal_torch_with_the_same_weights(train):
  torch.manual_seed(0)
  ngf, ndf, nt, nz, txt, b = 4, 4, 6, 5, 7, 3
  tg, td = TorchG(ngf, nt, nz, txt), TorchD(ndf, nt, txt)
  _randomize(tg, 1)
  _randomize(td, 2)
  tg.train(train)
  td.train(train)
  z, t = torch.randn(b, nz), torch.randn(b, txt)
  image = torch.rand(b, 3, 64, 64) * 2 - 1
  with torch.no_grad():
    want_g, want_d = tg(z, t).numpy(), td(image, t).numpy()
  g, d = models.Generator(ngf=ngf, nt=nt), models.Discriminator(ndf=ndf, nt=nt)
  kwargs = {'mutable': ['batch_stats']} if train else {}
  got_g = g.apply(g_variables(tg), jnp.asarray(z.numpy()), jnp.asarray(t.numpy()),
                  train=train, **kwargs)
  got_d = d.apply(d_variables(td), jnp.asarray(image.numpy().transpose(0, 2, 3, 1)),
                  jnp.asarray(t.numpy()), train=train, **kwargs)
  if train:
    got_g, got_d = got_g[0], got_d[0]
  np.testing.assert_allclose(np.asarray(got_g).transpose(0, 3, 1, 2), want_g, atol=2e-5)
  np.testing.assert_allclose(np.asarray(got_d), want_d, rtol=1e-4, atol=1e-4)


def _bce(logits, label):
  p = 1 / (1 + np.exp(-logits))
  return -(label * np.log(p) + (1 - label) * np.log(1 - p))


def test_cls_loss_terms_equal_the_formula():
  rng = np.random.default_rng(0)
  real, wrong, fake = (rng.normal(size=6).astype(np.float32) for _ in range(3))
  loss, (r, w, f) = trainer.discriminator_loss(real, wrong, fake, 0.5)
  want = _bce(real, 1).mean() + 0.5 * _bce(wrong, 0).mean() + 0.5 * _bce(fake, 0).mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose([r, w, f], [_bce(real, 1).mean(), _bce(wrong, 0).mean(),
                                         _bce(fake, 0).mean()], rtol=1e-5)
  # GAN (no CLS): real + fake.
  loss0, _ = trainer.discriminator_loss(real, None, fake, 0.0)
  np.testing.assert_allclose(loss0, _bce(real, 1).mean() + _bce(fake, 0).mean(), rtol=1e-5)


def test_int_interpolation_and_weighted_generator_loss_equal_the_formulas():
  rng = np.random.default_rng(1)
  t = rng.normal(size=(6, 4)).astype(np.float32)
  np.testing.assert_allclose(trainer.interpolate(t, 0.5), (t[:3] + t[3:]) / 2, rtol=1e-6)
  np.testing.assert_allclose(trainer.interpolate(t, 0.3), 0.3 * t[:3] + 0.7 * t[3:],
                             rtol=1e-6)
  logits = rng.normal(size=9).astype(np.float32)
  weights = np.r_[np.ones(6), np.full(3, 0.7)]
  want = np.sum(weights * _bce(logits, 1)) / 9
  np.testing.assert_allclose(trainer.generator_loss(logits, 6, 0.7), want, rtol=1e-5)
  z, z_hat = rng.normal(size=(2, 3, 5))
  np.testing.assert_allclose(trainer.style_loss(z, z_hat),
                             np.mean(np.sum((z - z_hat) ** 2, axis=1)), rtol=1e-5)


# --- a tiny method on a fake DAMSM (no data preparation, no DAMSM training) ----


def _fake_damsm(n_words, nef=8):
  text = damsm_enc.TextEncoder(n_words=n_words, embedding_dim=8, nef=nef)
  image = damsm_enc.ImageEncoder(nef=nef, backbone='tiny', backbone_trainable=True,
                                 tiny_width=4)
  key = jax.random.key(0, impl='rbg')
  text_vars = text.init(key, jnp.ones((2, 5), jnp.int32), jnp.full((2,), 5),
                        deterministic=True)
  image_vars = image.init(key, jnp.zeros((2, 64, 64, 3)), train=False)
  config = ml_collections.ConfigDict({
      'model': {'nef': nef, 'backbone': 'tiny'}, 'data': {'image_sizes': (64,)},
      'damsm': {'gamma1': 4.0, 'gamma2': 5.0, 'gamma3': 10.0}})
  return damsm_loader.FrozenDamsm(config=config, text_encoder=text, image_encoder=image,
                                  text_variables=jax.device_get(text_vars),
                                  image_variables=jax.device_get(image_vars), step=1)


def _tiny_method(monkeypatch, **overrides):
  config = tiny_configs.load_config('gan_int_cls', 'demo')
  tiny_configs.apply(config, {'model.ngf': 2, 'model.ndf': 2, 'model.nt': 4, 'model.z_dim': 6,
                              'train.batch_size': 4, 'eval.shapes_classifier': False,
                              'damsm.workdir': 'fake', **overrides})
  monkeypatch.setattr(damsm_loader, 'load', lambda workdir, vocab=None: _fake_damsm(12))
  return trainer.GanIntCls(config, None, 40)


def _batch(b=4, t=5, seed=0):
  rng = np.random.default_rng(seed)
  return {'image64': jnp.asarray(rng.integers(0, 256, (b, 64, 64, 3)), jnp.uint8),
          'caption': jnp.asarray(rng.integers(1, 12, (b, t)), jnp.int32),
          'caption_len': jnp.full((b,), t, jnp.int32),
          'wrong_caption': jnp.asarray(rng.integers(1, 12, (b, t)), jnp.int32),
          'wrong_caption_len': jnp.full((b,), t, jnp.int32),
          'class_id': jnp.arange(b, dtype=jnp.int32),
          'index': jnp.arange(b, dtype=jnp.int32),
          'wrong_index': jnp.arange(b, dtype=jnp.int32)[::-1],
          'attributes': jnp.asarray(rng.integers(0, 2, (b, 5)), jnp.int32)}


def test_tiny_train_step_is_finite_and_updates_g_d_and_s(monkeypatch):
  method = _tiny_method(monkeypatch)
  state = jax.jit(method.init_state)(jax.random.key(0))
  batch = _batch()
  new, metrics = jax.jit(method.train_step)(state, batch)
  for name in ('D_loss', 'D_real', 'D_wrong', 'D_fake', 'G_loss', 'S_loss'):
    assert np.isfinite(float(metrics[name])), name
  for net in ('G', 'D0', 'S'):
    before, after = jax.tree.leaves(state.nets[net].params), jax.tree.leaves(new.nets[net].params)
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), net
  # The frozen DAMSM is untouched.
  assert all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.nets['text_encoder'].params),
      jax.tree.leaves(new.nets['text_encoder'].params)))
  out = jax.jit(method.eval_step)(new, batch)
  assert out['images'].shape == (4, 64, 64, 3) and out['images'].dtype == jnp.uint8
  assert out['style_images'].shape == (4, 64, 64, 3)
  # Style transfer takes the content from the previous example's caption.
  np.testing.assert_array_equal(out['style_content_attributes'],
                                np.roll(np.asarray(batch['attributes']), 1, axis=0))

  # Style transfer is G(S(style image), text) with the (non-EMA) eval-mode nets.
  x = method.real_images(batch)[-1]
  text = jnp.ones((4, method.conditioner.dim))

  def two_ways(state):
    z = method.style.apply(state.nets['S'].variables(), x, train=False)
    direct = method.generator.apply(state.nets['G'].variables(), z, text, train=False)
    return method.style_transfer(state, x, text), direct

  got, want = jax.jit(two_ways)(new)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_config_errors_are_clear(monkeypatch):
  with pytest.raises(errors.ConfigError, match='64x64'):
    _tiny_method(monkeypatch, **{'data.image_sizes': (128,)})
  with pytest.raises(errors.ConfigError, match='even'):
    _tiny_method(monkeypatch, **{'train.batch_size': 5})
  with pytest.raises(errors.ConfigError, match='text.kind'):
    _tiny_method(monkeypatch, **{'text.kind': 'bow'})
  with pytest.raises(errors.ConfigError, match='pickle_dir'):
    _tiny_method(monkeypatch, **{'text.kind': 'pickle'})
  with pytest.raises(errors.ConfigError, match='char_cnn_rnn_workdir'):
    _tiny_method(monkeypatch, **{'text.kind': 'char_cnn_rnn'})
