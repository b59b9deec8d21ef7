"""StackGAN (PyTorch release networks): sizes, names, counts, losses, 2 phases.

Parameter counts are reference §4.11 (COCO: Stage-I G 20.02M / D 12.41M,
Stage-II G without Stage-I 37.13M / D 159.89M), checked with jax.eval_shape.
The discriminator loss is checked against a numpy transcription of the
official compute_discriminator_loss (reference §4.9).
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax import errors
from t2ijax.models import stackgan
from t2ijax.trainers import loop
from t2ijax.trainers import stackgan as trainer
from tests import tiny_configs
from tests import param_trees
from tests import short_runs

COCO = dict(gf_dim=192, condition_dim=128)


def _abstract(module, *inputs, **kwargs):
  return jax.eval_shape(lambda: module.init_with_output(param_trees.key(0), *inputs, **kwargs))


# --- networks ----------------------------------------------------------------


def test_stage1_generator_matches_the_official_one():
  out, variables = _abstract(stackgan.Stage1Generator(**COCO), jnp.zeros((2, 100)),
                             jnp.zeros((2, 1024)), ca_key=param_trees.key(1))
  assert param_trees.count(variables['params']) == 20_020_832                 # 20.02M
  assert out['images'][0].shape == (2, 64, 64, 3)
  params = param_trees.flat_shapes(variables['params'])
  expected = {
      'ca_net.fc.weight (256, 1024)': ('ca_net/fc/kernel', (1024, 256)),
      'fc.0.weight (24576, 228)': ('fc/kernel', (228, 24576)),     # z (100) + c (128)
      'fc.1.weight': ('fc_bn/scale', (24576,)),
      'upsample1.1.weight': ('upsample1/conv/kernel', (3, 3, 1536, 768)),
      'upsample4.2.bias': ('upsample4/bn/bias', (96,)),
      'img.0.weight': ('img/kernel', (3, 3, 96, 3)),
  }
  for torch_key, (path, shape) in expected.items():
    assert params.get(path) == shape, torch_key
  assert 'fc/bias' not in params


def test_stage2_generator_matches_the_official_one():
  out, variables = _abstract(
      stackgan.Stage2Generator(**COCO, r_num=2, image_size=256),
      jnp.zeros((2, 100)), jnp.zeros((2, 1024)), ca_key=param_trees.key(1))
  params = dict(variables['params'])
  stage1 = params.pop('STAGE1_G')
  assert param_trees.count(params) == 37_130_480                             # 37.13M
  assert param_trees.count(stage1) == 20_020_832
  assert [x.shape for x in out['images']] == [(2, 64, 64, 3), (2, 256, 256, 3)]
  flat = param_trees.flat_shapes(params)
  expected = {
      'encoder.0.weight': ('encoder/conv_0/kernel', (3, 3, 3, 192)),
      'encoder.2.weight': ('encoder/conv_1/kernel', (4, 4, 192, 384)),
      'encoder.6.weight': ('encoder/bn_2/scale', (768,)),
      # [image code (768), c (128)]
      'hr_joint.0.weight': ('hr_joint/conv/kernel', (3, 3, 896, 768)),
      'residual.1.block.3.weight': ('residual_1/conv2/kernel', (3, 3, 768, 768)),
      'upsample4.1.weight': ('upsample4/conv/kernel', (3, 3, 96, 48)),
      'img.0.weight': ('img/kernel', (3, 3, 48, 3)),
  }
  for torch_key, (path, shape) in expected.items():
    assert flat.get(path) == shape, torch_key
  assert 'residual_2/conv1/kernel' not in flat


def test_stage2_generator_at_128_has_three_upblocks():
  out, variables = _abstract(
      stackgan.Stage2Generator(gf_dim=8, condition_dim=4, r_num=1, image_size=128,
                               stage1_gf_dim=8, stage1_condition_dim=4, z_dim=5),
      jnp.zeros((2, 5)), jnp.zeros((2, 7)), ca_key=param_trees.key(1))
  assert out['images'][1].shape == (2, 128, 128, 3)
  assert 'upsample3' in variables['params'] and 'upsample4' not in variables['params']


@pytest.mark.parametrize('size, uncond, expected', [
    (64, False, 12_407_425), (256, True, 159_889_538)])           # 12.41M, 159.89M
def test_discriminators_match_the_official_ones(size, uncond, expected):
  d = stackgan.Discriminator(df_dim=96, image_size=size, use_uncond=uncond)
  out, variables = _abstract(d, jnp.zeros((2, size, size, 3)), jnp.zeros((2, 128)))
  assert param_trees.count(variables['params']) == expected
  assert out['code'].shape == (2, 4, 4, 768) and out['cond'].shape == (2,)
  params = param_trees.flat_shapes(variables['params'])
  # [image code (768), c (128)] -> conv3x3 (no bias) -> 4x4/4 conv with bias.
  assert params['get_cond_logits/joint_conv/kernel'] == (3, 3, 896, 768)
  assert params['get_cond_logits/out/bias'] == (1,)
  assert 'encode_img/bn_0/scale' not in params
  if uncond:
    # encode_img.{0,2,...,20}: 6 strided convs then 3x3 3072 -> 1536 -> 768.
    assert params['encode_img/conv_6/kernel'] == (3, 3, 3072, 1536)
    assert params['encode_img/conv_7/kernel'] == (3, 3, 1536, 768)
    assert params['get_uncond_logits/out/kernel'] == (4, 4, 768, 1)
  else:
    assert 'uncond' not in out and 'encode_img/conv_4/kernel' not in params


def test_stage2_keeps_stage1_image_detached():
  # 32 px: one upBlock after the 16x16 encoding, the cheapest Stage-II.
  g = stackgan.Stage2Generator(gf_dim=4, condition_dim=3, r_num=1, image_size=32,
                               stage1_gf_dim=2, stage1_condition_dim=3, z_dim=5)
  z, emb = jnp.ones((2, 5)), jnp.ones((2, 6))
  variables = jax.jit(lambda: g.init(param_trees.key(0), z, emb, ca_key=param_trees.key(1)))()

  def final(params):
    out = g.apply({**variables, 'params': params}, z, emb, ca_key=param_trees.key(1))
    return jnp.sum(out['images'][1])

  grads = jax.jit(jax.grad(final))(variables['params'])
  assert all(not np.any(x) for x in jax.tree.leaves(grads['STAGE1_G']))
  assert np.any(grads['upsample1']['conv']['kernel'])


# --- losses and schedule -----------------------------------------------------


def _bce(logits, label):
  p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  return -np.mean(label * np.log(p) + (1 - label) * np.log(1 - p))


def test_discriminator_loss_is_the_official_one():
  """Stage-II's loss from the D's own head outputs, transcribed in numpy."""
  method = object.__new__(trainer.StackGan)   # only discriminators and stage
  method.stage = 2
  d = stackgan.Discriminator(df_dim=2, condition_dim=3, image_size=64, use_uncond=True)
  method.discriminators = [d]
  real = jax.random.uniform(param_trees.key(0), (4, 64, 64, 3), minval=-1, maxval=1)
  fake = jax.random.uniform(param_trees.key(1), (4, 64, 64, 3), minval=-1, maxval=1)
  cond = jax.random.normal(param_trees.key(2), (4, 3))
  variables = d.init(param_trees.key(3), real, cond)
  loss, _ = jax.jit(method.discriminator_loss)(
      variables['params'], {'batch_stats': variables['batch_stats']}, real, fake, cond)

  @jax.jit
  def heads(real, fake, cond):
    run = lambda *a, **k: d.apply(variables, *a, train=True, mutable=['batch_stats'],
                                  **k)[0]
    r, f = run(real, cond), run(fake, cond)
    return r, f, run(r['code'][:-1], cond[1:], method=d.cond_head)

  r, f, wrong = heads(real, fake, cond)
  expected = ((_bce(r['cond'], 1) + _bce(r['uncond'], 1)) / 2
              + (_bce(f['cond'], 0) + _bce(wrong, 0) + _bce(f['uncond'], 0)) / 3)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_lr_halves_every_decay_period():
  schedule = trainer.step_decay(2e-4, steps_per_epoch=10, decay_epochs=20)
  assert [float(schedule(s)) for s in (0, 199, 200, 399, 400)] == pytest.approx(
      [2e-4, 2e-4, 1e-4, 1e-4, 5e-5])
  assert float(trainer.step_decay(2e-4, 10, -1)(10_000)) == pytest.approx(2e-4)


# --- two-phase training ------------------------------------------------------


def _tiny(variant, data_dir, damsm_dir):
  config = tiny_configs.load_config('stackgan', variant)
  tiny_configs.apply(config, {
      'data.shapes.num_train': 32, 'data.shapes.num_test': 16,
      'data.captions_per_image': 3, 'data.max_words': 8, 'data.num_parallel_calls': 2,
      'model.ngf': 4, 'model.ndf': 4, 'model.ncf': 8, 'model.z_dim': 8, 'model.r_num': 1,
      'train.batch_size': 8, 'train.num_steps': 2,
      'checkpoint.every_steps': 2, 'checkpoint.use_async': False, 'log.every_steps': 1,
      'log.sample_every_steps': 2, 'log.num_samples': 2,
      'eval.batch_size': 8, 'eval.num_batches': 1, 'eval.shapes_classifier': False,
      # 4 steps per epoch: the lr halves after the first epoch.
      'optim.lr_decay_epochs': 1,
  })
  config.data.data_dir = data_dir
  if damsm_dir:
    config.damsm.workdir = damsm_dir
  return config


def test_stage2_without_stage1_names_the_command(data_dir, tmp_path):
  config = _tiny('demo_stage2', data_dir, '')
  config.model.stage1_workdir = str(tmp_path / 'missing')
  with pytest.raises(errors.CheckpointError,
                     match=r'--config=configs/stackgan.py:demo --workdir=.*missing'):
    loop.Setup(config, str(tmp_path / 'stage2'), jax.devices()[:1])


def test_two_phases(damsm_dir, data_dir, tmp_path):
  stage1_dir, stage2_dir = str(tmp_path / 'stage1'), str(tmp_path / 'stage2')
  config1 = _tiny('demo', data_dir, damsm_dir)
  # Stage-I's steps without its eval; the checkpoint at its last step makes
  # the run "finished" for Stage-II.
  metrics, state1 = short_runs.train_steps(config1, stage1_dir, config1.train.num_steps)
  for key in ('D_loss', 'D_wrong', 'G_adv', 'kl'):
    assert np.isfinite(metrics[key]), key

  config2 = _tiny('demo_stage2', data_dir, '')
  config2.model.stage1_workdir = stage1_dir
  config2.train.num_steps = 5       # past the first epoch (4 steps): lr halves
  config2.checkpoint.every_steps = 5
  result = loop.train_and_evaluate(config2, stage2_dir, jax.devices()[:1])
  assert np.isfinite(result['G_loss']) and np.isfinite(result['D_loss'])
  assert result['lr'] == pytest.approx(1e-4)
  # The DAMSM is Stage-I's; Stage-I's weights came in and stayed frozen.
  assert config2.damsm.workdir == damsm_dir
  _, state2, _ = loop.restore_state(config2, stage2_dir, jax.devices()[:1])
  s1 = jax.tree.leaves(state1.nets['G'].params)
  s2 = jax.tree.leaves(state2.nets['G'].params['STAGE1_G'])
  for a, b in zip(s1, s2):
    np.testing.assert_array_equal(a, b)
  # ...but its BatchNorm statistics moved (train mode, as officially).
  m1 = state1.nets['G'].collections['batch_stats']['fc_bn']['mean']
  m2 = state2.nets['G'].collections['batch_stats']['STAGE1_G']['fc_bn']['mean']
  assert not np.allclose(m1, m2)


# --- numerical equality with PyTorch STAGE1_G / STAGE1_D ---------------------
# Built here from reference §4.8 with the official module names, so
# state_dict() has the official keys.

_LEAF = {'kernel': 'weight', 'bias': 'bias', 'scale': 'weight',
         'mean': 'running_mean', 'var': 'running_var'}
_SEQ = {'upsample': {'conv': '1', 'bn': '2'}, 'hr_joint': {'conv': '0', 'bn': '1'},
        'get_cond_logits': {'joint_conv': 'outlogits.0', 'joint_bn': 'outlogits.1',
                            'out': 'outlogits.3'},
        'get_uncond_logits': {'out': 'outlogits.0'},
        'encoder': {'conv_0': '0', 'conv_1': '2', 'bn_1': '3', 'conv_2': '5',
                    'bn_2': '6'}}
_RES = {'conv1': '0', 'bn1': '1', 'conv2': '3', 'bn2': '4'}


def _torch_key(path: tuple) -> str:
  """A flax path (without the collection) -> the official torch key."""
  *mods, leaf = path
  out = []
  for i, name in enumerate(mods):
    parent = mods[i - 1] if i else ''
    table = _SEQ.get('upsample' if parent.startswith('upsample') else parent, {})
    if name in table:
      out.append(table[name])
    elif parent == 'encode_img':        # conv_i at 3i - 1 (conv_0 at 0), bn_i at 3i
      kind, index = name.split('_')
      i = int(index)
      out.append(str(3 * i if kind == 'bn' else max(3 * i - 1, 0)))
    elif name.startswith('residual_'):
      out += ['residual', name.split('_')[1], 'block']
    elif name in _RES:
      out.append(_RES[name])
    elif name == 'fc' and parent != 'ca_net':
      out += ['fc', '0']
    elif name == 'fc_bn':
      out += ['fc', '1']
    elif name == 'img':
      out += ['img', '0']
    else:
      out.append(name)
  return '.'.join(out + [_LEAF[leaf]])


def _torch_stage1(gf, cdim, z_dim, text_dim, ndf):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn

  conv3x3 = lambda i, o: nn.Conv2d(i, o, 3, 1, 1, bias=False)

  class CaNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.fc = nn.Linear(text_dim, 2 * cdim)

    def forward(self, embedding, eps):
      x = torch.relu(self.fc(embedding))
      mu, logvar = x[:, :cdim], x[:, cdim:]
      return mu + torch.exp(0.5 * logvar) * eps, mu, logvar

  def up(i, o):
    return nn.Sequential(nn.Upsample(scale_factor=2, mode='nearest'), conv3x3(i, o),
                         nn.BatchNorm2d(o), nn.ReLU())

  class Stage1G(nn.Module):

    def __init__(self):
      super().__init__()
      self.ngf = 8 * gf
      self.ca_net = CaNet()
      self.fc = nn.Sequential(nn.Linear(z_dim + cdim, self.ngf * 16, bias=False),
                              nn.BatchNorm1d(self.ngf * 16), nn.ReLU())
      for k in range(1, 5):
        setattr(self, f'upsample{k}', up(self.ngf // 2**(k - 1), self.ngf // 2**k))
      self.img = nn.Sequential(conv3x3(self.ngf // 16, 3), nn.Tanh())

    def forward(self, z, embedding, eps):
      c, mu, logvar = self.ca_net(embedding, eps)
      h = self.fc(torch.cat([z, c], 1)).view(-1, self.ngf, 4, 4)   # z first
      for k in range(1, 5):
        h = getattr(self, f'upsample{k}')(h)
      return self.img(h), mu, logvar

  class CondLogits(nn.Module):

    def __init__(self):
      super().__init__()
      self.outlogits = nn.Sequential(conv3x3(8 * ndf + cdim, 8 * ndf),
                                     nn.BatchNorm2d(8 * ndf), nn.LeakyReLU(0.2),
                                     nn.Conv2d(8 * ndf, 1, 4, 4))    # Sigmoid left out

    def forward(self, code, c):
      tiled = c.view(-1, cdim, 1, 1).repeat(1, 1, 4, 4)
      return self.outlogits(torch.cat([code, tiled], 1)).view(-1)   # image first

  class Stage1D(nn.Module):

    def __init__(self):
      super().__init__()
      conv = lambda i, o: nn.Conv2d(i, o, 4, 2, 1, bias=False)
      self.encode_img = nn.Sequential(
          conv(3, ndf), nn.LeakyReLU(0.2),
          conv(ndf, 2 * ndf), nn.BatchNorm2d(2 * ndf), nn.LeakyReLU(0.2),
          conv(2 * ndf, 4 * ndf), nn.BatchNorm2d(4 * ndf), nn.LeakyReLU(0.2),
          conv(4 * ndf, 8 * ndf), nn.BatchNorm2d(8 * ndf), nn.LeakyReLU(0.2))
      self.get_cond_logits = CondLogits()

    def forward(self, images, c):
      return self.get_cond_logits(self.encode_img(images), c)

  return torch, Stage1G(), Stage1D()


def test_stage1_equals_torch_reference():
  from tests import torch_attngan_reference as ref
  gf, cdim, z_dim, text_dim, ndf, batch = 4, 3, 5, 6, 2, 2
  torch, tg, td = _torch_stage1(gf, cdim, z_dim, text_dim, ndf)
  ref.randomize_(tg, 0).eval()
  ref.randomize_(td, 1).eval()
  rng = np.random.default_rng(0)
  z, emb, eps = (rng.standard_normal(s).astype(np.float32)
                 for s in ((batch, z_dim), (batch, text_dim), (batch, cdim)))
  with torch.no_grad():
    image, mu, _ = tg(*(torch.from_numpy(x) for x in (z, emb, eps)))
    logits = td(image, mu).numpy()
  image = image.permute(0, 2, 3, 1).numpy()

  g = stackgan.Stage1Generator(gf_dim=gf, condition_dim=cdim, z_dim=z_dim)
  _, g_abstract = _abstract(g, jnp.zeros((2, z_dim)), jnp.zeros((2, text_dim)),
                            ca_key=param_trees.key(1))
  out = jax.jit(lambda v: g.apply(v, z, emb, ca_noise=eps))(
      param_trees.from_torch(g_abstract, tg.state_dict(), _torch_key))
  np.testing.assert_allclose(out['images'][0], image, atol=2e-4)
  np.testing.assert_allclose(out['mu'], mu.numpy(), atol=1e-5)

  d = stackgan.Discriminator(df_dim=ndf, condition_dim=cdim, image_size=64)
  _, d_abstract = _abstract(d, jnp.zeros((2, 64, 64, 3)), jnp.zeros((2, cdim)))
  d_out = jax.jit(lambda v, x, c: d.apply(v, x, c))(
      param_trees.from_torch(d_abstract, td.state_dict(), _torch_key), jnp.asarray(image),
      jnp.asarray(mu.numpy()))
  np.testing.assert_allclose(d_out['cond'], logits, atol=2e-4)


def test_stage2_and_its_discriminator_have_the_official_keys():
  """Every flax path maps to a key of §4.10's list, with the right shape."""
  g = stackgan.Stage2Generator(gf_dim=4, condition_dim=3, r_num=2, image_size=256,
                               stage1_gf_dim=4, stage1_condition_dim=3, z_dim=5)
  _, variables = _abstract(g, jnp.zeros((2, 5)), jnp.zeros((2, 6)), ca_key=param_trees.key(1))
  keys = {_torch_key(tuple(p)) for (_, *p) in
          flax.traverse_util.flatten_dict(variables)}
  for key in ('STAGE1_G.ca_net.fc.weight', 'STAGE1_G.fc.0.weight',
              'STAGE1_G.fc.1.running_var', 'STAGE1_G.upsample4.2.bias',
              'STAGE1_G.img.0.weight', 'ca_net.fc.bias', 'encoder.0.weight',
              'encoder.2.weight', 'encoder.3.running_mean', 'encoder.5.weight',
              'encoder.6.weight', 'hr_joint.0.weight', 'hr_joint.1.bias',
              'residual.1.block.0.weight', 'residual.0.block.4.running_var',
              'upsample4.1.weight', 'upsample1.2.weight', 'img.0.weight'):
    assert key in keys, key
  d = stackgan.Discriminator(df_dim=2, condition_dim=3, image_size=256, use_uncond=True)
  _, variables = _abstract(d, jnp.zeros((2, 256, 256, 3)), jnp.zeros((2, 3)))
  keys = {_torch_key(tuple(p)) for (_, *p) in
          flax.traverse_util.flatten_dict(variables)}
  convs = {f'encode_img.{i}.weight' for i in (0, 2, 5, 8, 11, 14, 17, 20)}
  bns = {f'encode_img.{i}.running_mean' for i in (3, 6, 9, 12, 15, 18, 21)}
  heads = {'get_cond_logits.outlogits.0.weight', 'get_cond_logits.outlogits.1.weight',
           'get_cond_logits.outlogits.3.bias', 'get_uncond_logits.outlogits.0.bias'}
  assert convs | bns | heads <= keys
  assert len([k for k in keys if k.startswith('encode_img') and
              k.endswith('.weight')]) == 8 + 7      # 8 convs, 7 BN scales
