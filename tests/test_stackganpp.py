"""StackGAN++: official sizes, parameter names and counts, losses, training.

Parameter counts are reference §5.9 (G 21.24M; D64 5.72M; D128 18.83M; D256
71.27M), checked with jax.eval_shape so nothing full-size is allocated. The
color-consistency term is checked against a numpy transcription of the
formula in §5.5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax import errors
from t2ijax.losses import regularizers
from t2ijax.models import stackganpp
from t2ijax.trainers import gan
from t2ijax.trainers import loop
from t2ijax.trainers import stackganpp as trainer
from tests import tiny_configs
from tests import param_trees
from tests import short_runs


def _abstract_generator(generator, text_dim=1024, batch=2):
  embedding = jnp.zeros((batch, text_dim)) if generator.conditional else None
  return jax.eval_shape(lambda: generator.init_with_output(
      param_trees.key(0), jnp.zeros((batch, generator.z_dim)), embedding, ca_key=param_trees.key(1)))


def _abstract_discriminator(d, batch=2):
  size = d.image_size
  return jax.eval_shape(lambda: d.init_with_output(
      param_trees.key(0), jnp.zeros((batch, size, size, 3)), jnp.zeros((batch, d.ef_dim))))


# --- networks ----------------------------------------------------------------


def test_generator_matches_the_official_tree():
  out, variables = _abstract_generator(stackganpp.Generator())
  assert param_trees.count(variables['params']) == 21_239_696          # reference: 21.24M
  assert [x.shape for x in out['images']] == [
      (2, 64, 64, 3), (2, 128, 128, 3), (2, 256, 256, 3)]
  assert out['mu'].shape == out['logvar'].shape == (2, 128)
  params = param_trees.flat_shapes(variables['params'])
  stats = param_trees.flat_shapes(variables['batch_stats'])
  # torch key (without 'module.') -> flax path and shape (kernels transposed).
  expected = {
      'ca_net.fc.weight (512, 1024)': ('ca_net/fc/kernel', (1024, 512)),
      'h_net1.fc.0.weight (32768, 228)': ('h_net1/fc/kernel', (228, 32768)),
      'h_net1.fc.1.weight': ('h_net1/fc_bn/scale', (32768,)),
      'h_net1.upsample1.1.weight': ('h_net1/upsample1/conv/kernel', (3, 3, 1024, 1024)),
      'h_net1.upsample4.2.bias': ('h_net1/upsample4/bn/bias', (128,)),
      'img_net1.img.0.weight': ('img_net1/img/kernel', (3, 3, 64, 3)),
      # c (128) tiled first, then h: 192 -> 2 * 64 for the GLU.
      'h_net2.jointConv.0.weight': ('h_net2/jointConv/conv/kernel', (3, 3, 192, 128)),
      'h_net2.jointConv.1.weight': ('h_net2/jointConv/bn/scale', (128,)),
      'h_net2.residual.1.block.0.weight': ('h_net2/residual_1/conv1/kernel', (3, 3, 64, 128)),
      'h_net2.residual.1.block.4.bias': ('h_net2/residual_1/bn2/bias', (64,)),
      'h_net2.upsample.1.weight': ('h_net2/upsample/conv/kernel', (3, 3, 64, 64)),
      'h_net3.jointConv.0.weight': ('h_net3/jointConv/conv/kernel', (3, 3, 160, 64)),
      'img_net3.img.0.weight': ('img_net3/img/kernel', (3, 3, 16, 3)),
  }
  for torch_key, (path, shape) in expected.items():
    assert params.get(path) == shape, torch_key
  assert stats['h_net1/fc_bn/mean'] == (32768,)
  assert 'h_net4' not in variables['params']


def test_unconditional_generator_tiles_z_instead_of_c():
  out, variables = _abstract_generator(stackganpp.Generator(conditional=False))
  params = param_trees.flat_shapes(variables['params'])
  assert 'ca_net/fc/kernel' not in params and out['mu'] is None
  assert params['h_net1/fc/kernel'] == (100, 32768)             # z alone
  assert params['h_net2/jointConv/conv/kernel'] == (3, 3, 164, 128)  # z (100) + 64


@pytest.mark.parametrize('size, expected', [
    (64, 5_723_906), (128, 18_834_178), (256, 71_269_122)])   # 5.72M, 18.83M, 71.27M
def test_discriminator_counts_and_paths(size, expected):
  out, variables = _abstract_discriminator(stackganpp.Discriminator(image_size=size))
  params = param_trees.flat_shapes(variables['params'])
  assert param_trees.count(variables['params']) == expected
  assert out['code'].shape == (2, 4, 4, 512)
  assert out['cond'].shape == out['uncond'].shape == (2,)
  # [c (128) tiled, code (512)] -> 512; 4x4/4 heads with bias.
  assert params['jointConv/conv/kernel'] == (3, 3, 640, 512)
  assert params['logits/kernel'] == (4, 4, 512, 1) and params['logits/bias'] == (1,)
  assert params['uncond_logits/bias'] == (1,)
  assert params['img_code_s16/conv_0/kernel'] == (4, 4, 3, 64)
  assert 'img_code_s16/bn_0/scale' not in params
  if size == 256:
    assert params['img_code_s64_1/conv/kernel'] == (3, 3, 2048, 1024)


def test_unconditional_discriminator_has_only_logits():
  d = stackganpp.Discriminator(image_size=64, conditional=False)
  out, variables = jax.eval_shape(lambda: d.init_with_output(
      param_trees.key(0), jnp.zeros((2, 64, 64, 3))))
  assert set(variables['params']) == {'img_code_s16', 'logits'}
  assert 'cond' not in out and out['uncond'].shape == (2,)


def test_condition_is_tiled_first():
  """Only the condition's channels of jointConv see the condition."""
  d = stackganpp.Discriminator(df_dim=2, ef_dim=3, image_size=64)
  images = jax.random.normal(param_trees.key(0), (2, 64, 64, 3))
  variables = d.init(param_trees.key(1), images, jnp.zeros((2, 3)))
  params = jax.tree_util.tree_map(lambda x: x, variables['params'])  # a copy
  kernel = params['jointConv']['conv']['kernel']
  # Zero the first 3 input channels: the condition must stop mattering.
  params['jointConv']['conv']['kernel'] = kernel.at[:, :, :3, :].set(0.0)
  v = {**variables, 'params': params}
  a = d.apply(v, images, jnp.zeros((2, 3)))['cond']
  b = d.apply(v, images, jnp.ones((2, 3)) * 5.0)['cond']
  np.testing.assert_allclose(a, b, atol=1e-6)


# --- losses ------------------------------------------------------------------


def _numpy_color(fine, coarse, weight):
  def stats(x):
    b, h, w, c = x.shape
    p = x.reshape(b, h * w, c).astype(np.float64)
    mu = p.mean(1)
    cov = np.stack([(p[i] - mu[i]).T @ (p[i] - mu[i]) / (h * w) for i in range(b)])
    return mu, cov
  mu1, cov1 = stats(fine)
  mu2, cov2 = stats(coarse)
  return weight * np.mean((mu1 - mu2) ** 2), 5 * weight * np.mean((cov1 - cov2) ** 2)


def test_color_consistency_matches_formula_and_holds_the_coarse_image():
  rng = np.random.default_rng(0)
  images = [rng.uniform(-1, 1, (3, s, s, 3)).astype(np.float32) for s in (4, 8, 16)]
  out = regularizers.color_consistency([jnp.asarray(x) for x in images], 50.0)
  for k in (1, 2):
    mu, cov = _numpy_color(images[k], images[k - 1], 50.0)
    np.testing.assert_allclose(out[f'color_mu{k}'], mu, rtol=1e-5)
    np.testing.assert_allclose(out[f'color_cov{k}'], cov, rtol=1e-5)
  # The coarser image is detached: the (8, 16) term moves only the 16 image.
  grads = jax.grad(lambda xs: regularizers.color_consistency(xs, 1.0)['color_cov2'])(
      [jnp.asarray(x) for x in images])
  assert not np.any(grads[1]) and np.any(grads[2])


def test_kl_is_the_official_mean():
  mu = np.array([[0.5, -1.0, 0.0]], np.float32)
  logvar = np.array([[0.1, -0.3, 1.2]], np.float32)
  # -0.5 * mean(1 + logvar - mu^2 - exp(logvar)) (reference §4.1 / §5.2).
  direct = np.mean(0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar))
  np.testing.assert_allclose(gan.kl_loss(mu, logvar), direct, rtol=1e-6)


def test_ema_to_params_copies_only_on_snapshot_steps():
  params, ema = {'w': jnp.ones(3)}, {'w': jnp.zeros(3)}
  assert float(trainer.ema_to_params(params, ema, jnp.int32(1999), 2000)['w'][0]) == 1.0
  assert float(trainer.ema_to_params(params, ema, jnp.int32(4000), 2000)['w'][0]) == 0.0
  assert trainer.ema_to_params(params, ema, jnp.int32(4000), -1) is params


# --- training ----------------------------------------------------------------


def _tiny(variant, data_dir, damsm_dir):
  config = tiny_configs.load_config('stackganpp', variant)
  tiny_configs.apply(config, {
      'data.shapes.num_train': 32, 'data.shapes.num_test': 16,
      'data.captions_per_image': 3, 'data.max_words': 8, 'data.num_parallel_calls': 2,
      'model.ngf': 4, 'model.ndf': 4, 'model.ncf': 8, 'model.z_dim': 8,
      'train.batch_size': 8, 'train.num_steps': 2,
      'checkpoint.every_steps': 2, 'checkpoint.use_async': False, 'log.every_steps': 1,
      'log.sample_every_steps': -1,
      'eval.batch_size': 8, 'eval.num_batches': 1, 'eval.shapes_classifier': False,
      # Exercise the snapshot quirk inside the tiny run.
      'optim.ema_to_params_every': 2,
  })
  config.data.data_dir = data_dir
  config.damsm.workdir = damsm_dir
  return config


def test_trains_evaluates_and_copies_ema_at_snapshots(damsm_dir, data_dir, tmp_path):
  config = _tiny('demo', data_dir, damsm_dir)
  result = loop.train_and_evaluate(config, str(tmp_path), jax.devices()[:1])
  for key in ('D0_loss', 'D1_loss', 'D0_wrong', 'G_loss', 'G0_adv', 'G1_adv', 'kl'):
    assert np.isfinite(result[key]), key
  assert 0.0 <= result['eval/damsm_image_to_text_top1'] <= 1.0
  _, state, step = loop.restore_state(config, str(tmp_path), jax.devices()[:1])
  assert step == 2
  g = state.nets['G']
  # Step 2 is a snapshot step: the live G was replaced by its average.
  for a, b in zip(jax.tree.leaves(g.params), jax.tree.leaves(g.ema_params)):
    np.testing.assert_array_equal(a, b)


def test_unconditional_trains_with_color_consistency(damsm_dir, data_dir, tmp_path):
  config = _tiny('demo_unconditional', data_dir, damsm_dir)
  metrics, state = short_runs.train_steps(config, str(tmp_path), 2)
  assert 'kl' not in metrics and 'D0_wrong' not in metrics
  for key in ('D0_loss', 'D1_loss', 'G_loss', 'color_mu1', 'color_cov1'):
    assert np.isfinite(metrics[key]), key
  assert metrics['color_cov1'] > 0
  assert 'ca_net' not in state.nets['G'].params


def test_rejects_sizes_that_are_not_the_tree(damsm_dir, data_dir, tmp_path):
  config = _tiny('demo', data_dir, damsm_dir)
  config.data.image_sizes = (64, 256)
  with pytest.raises(errors.ConfigError, match='image_sizes'):
    loop.Setup(config, str(tmp_path), jax.devices()[:1])


# --- numerical equality with a PyTorch G_NET / D_NET -------------------------
# Built here from reference §5.2-§5.4 with the official module names, so its
# state_dict() keys are the official ones (without DataParallel's 'module.').

_SEQ = {'upsample': {'conv': '1', 'bn': '2'},        # nearest, conv, BN, GLU
        'other': {'conv': '0', 'bn': '1'}}           # jointConv, downBlock, ...
_RES = {'conv1': '0', 'bn1': '1', 'conv2': '3', 'bn2': '4'}
_TRUNK = {'conv_0': '0', 'conv_1': '2', 'bn_1': '3', 'conv_2': '5', 'bn_2': '6',
          'conv_3': '8', 'bn_3': '9'}
_LEAF = {'kernel': 'weight', 'bias': 'bias', 'scale': 'weight',
         'mean': 'running_mean', 'var': 'running_var'}


def _torch_key(path: tuple) -> str:
  """A flax path (without the collection) -> the official torch key."""
  *mods, leaf = path
  out = []
  for i, name in enumerate(mods):
    parent = mods[i - 1] if i else ''
    if name.startswith('residual_'):
      out += ['residual', name.split('_')[1], 'block']
    elif name in _RES:
      out.append(_RES[name])
    elif name == 'fc' and parent == 'h_net1':
      out += ['fc', '0']
    elif name == 'fc_bn':
      out += ['fc', '1']
    elif name in ('conv', 'bn'):
      out.append(_SEQ['upsample' if parent.startswith('upsample') else 'other'][name])
    elif name in ('img', 'logits', 'uncond_logits'):
      out += [name, '0']
    elif name in _TRUNK:
      out.append(_TRUNK[name])
    else:
      out.append(name)
  return '.'.join(out + [_LEAF[leaf]])


def _torch_modules():
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn
  from tests import torch_attngan_reference as ref

  def block3x3_leaky(cin, cout):
    return nn.Sequential(ref.conv3x3(cin, cout), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.2))

  def tile(c, side):
    return c.view(c.shape[0], c.shape[1], 1, 1).repeat(1, 1, side, side)

  class NextStage(nn.Module):

    def __init__(self, ngf, efg, r_num):
      super().__init__()
      self.jointConv = nn.Sequential(ref.conv3x3(ngf + efg, 2 * ngf),
                                     nn.BatchNorm2d(2 * ngf), ref.Glu())
      self.residual = nn.Sequential(*[ref.ResBlock(ngf) for _ in range(r_num)])
      self.upsample = ref.up_block(ngf, ngf // 2)

    def forward(self, h, c):
      x = self.jointConv(torch.cat([tile(c, h.shape[2]), h], 1))   # c first
      return self.upsample(self.residual(x))

  class GNet(nn.Module):

    def __init__(self, gf, ef, z_dim, text_dim, r_num):
      super().__init__()
      self.ca_net = ref.CaNet(text_dim, ef)
      self.h_net1 = ref.InitStage(16 * gf, ef + z_dim)
      self.img_net1 = ref.ImageHead(gf)
      self.h_net2 = NextStage(gf, ef, r_num)
      self.img_net2 = ref.ImageHead(gf // 2)

    def forward(self, z, embedding, eps):
      c, mu, logvar = self.ca_net(embedding, eps)
      h = self.h_net1(z, c)
      first = self.img_net1(h)
      return [first, self.img_net2(self.h_net2(h, c))], mu, logvar

  class DNet128(nn.Module):

    def __init__(self, ndf, efg):
      super().__init__()
      conv = lambda i, o: nn.Conv2d(i, o, 4, 2, 1, bias=False)
      self.img_code_s16 = nn.Sequential(
          conv(3, ndf), nn.LeakyReLU(0.2),
          conv(ndf, 2 * ndf), nn.BatchNorm2d(2 * ndf), nn.LeakyReLU(0.2),
          conv(2 * ndf, 4 * ndf), nn.BatchNorm2d(4 * ndf), nn.LeakyReLU(0.2),
          conv(4 * ndf, 8 * ndf), nn.BatchNorm2d(8 * ndf), nn.LeakyReLU(0.2))
      self.img_code_s32 = nn.Sequential(conv(8 * ndf, 16 * ndf),
                                        nn.BatchNorm2d(16 * ndf), nn.LeakyReLU(0.2))
      self.img_code_s32_1 = block3x3_leaky(16 * ndf, 8 * ndf)
      self.logits = nn.Sequential(nn.Conv2d(8 * ndf, 1, 4, 4))   # Sigmoid left out
      self.jointConv = block3x3_leaky(8 * ndf + efg, 8 * ndf)
      self.uncond_logits = nn.Sequential(nn.Conv2d(8 * ndf, 1, 4, 4))

    def forward(self, images, c):
      code = self.img_code_s32_1(self.img_code_s32(self.img_code_s16(images)))
      h = self.jointConv(torch.cat([tile(c, 4), code], 1))     # c first
      return self.logits(h).view(-1), self.uncond_logits(code).view(-1)

  return torch, ref, GNet, DNet128


def test_generator_and_discriminator_equal_torch_reference():
  torch, ref, g_net, d_net = _torch_modules()
  gf, ef, z_dim, text_dim, batch = 8, 4, 3, 6, 2
  tg = ref.randomize_(g_net(gf, ef, z_dim, text_dim, r_num=2), 0).eval()
  td = ref.randomize_(d_net(ndf=2, efg=ef), 1).eval()
  rng = np.random.default_rng(0)
  z, emb, eps = (rng.standard_normal(s).astype(np.float32)
                 for s in ((batch, z_dim), (batch, text_dim), (batch, ef)))
  with torch.no_grad():
    images, mu, _ = tg(*(torch.from_numpy(x) for x in (z, emb, eps)))
    t_images = [x.permute(0, 2, 3, 1).numpy() for x in images]
    cond, uncond = td(images[1], mu)

  g = stackganpp.Generator(gf_dim=gf, ef_dim=ef, z_dim=z_dim, r_num=2, num_branches=2)
  _, abstract = _abstract_generator(g, text_dim)
  out = jax.jit(lambda v: g.apply(v, z, emb, ca_noise=eps))(
      param_trees.from_torch(abstract, tg.state_dict(), _torch_key))
  for ours, theirs in zip(out['images'], t_images):
    np.testing.assert_allclose(ours, theirs, atol=2e-4)

  d = stackganpp.Discriminator(df_dim=2, ef_dim=ef, image_size=128)
  d_abstract = _abstract_discriminator(d)[1]
  d_out = jax.jit(lambda v, x, c: d.apply(v, x, c))(
      param_trees.from_torch(d_abstract, td.state_dict(), _torch_key), jnp.asarray(t_images[1]),
      jnp.asarray(mu.numpy()))
  np.testing.assert_allclose(d_out['cond'], cond.numpy(), atol=2e-4)
  np.testing.assert_allclose(d_out['uncond'], uncond.numpy(), atol=2e-4)
