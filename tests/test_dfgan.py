"""DF-GAN: the networks against the official ones, the losses, the train step, a run.

The PyTorch networks in tests/torch_dfgan_reference.py are written from
reference/stackgan_dfgan_family.md §6 in the official (plain) form; the Flax
port computes the same functions rearranged (see t2ijax/models/dfgan.py).
"""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from t2ijax import errors
from t2ijax.models import dfgan
from t2ijax.nn import conditional_norm
from t2ijax.nn import fast_conv
from t2ijax.nn import torch_compat
from t2ijax.trainers import dfgan as dfgan_trainer
from t2ijax.trainers import loop
from t2ijax.trainers import state as state_lib
from tests import tiny_configs
from tests import torch_dfgan_reference as ref

# Parameter counts of the official CUB networks (nf 32, 256 px, z 100,
# sentence 256), reference §6.2 and §6.3, counted by hand there.
OFFICIAL_COUNTS = {'netG': 9_744_131, 'netD': 6_619_206, 'netC': 295_936}
OFFICIAL_G_TENSORS = 226


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(tree):
  return jax.tree.map(lambda x: tuple(x.shape), tree)


def _flax_params(nf, size, z_dim, nef):
  k = jax.random.key(0)
  g = dfgan.NetG(nf, z_dim, size)
  d = dfgan.Discriminator(nf, size)
  g_vars = jax.eval_shape(g.init, k, jnp.zeros((2, z_dim)), jnp.zeros((2, nef)))
  d_vars = jax.eval_shape(d.init, k, jnp.zeros((2, size, size, 3)), jnp.zeros((2, nef)))
  return g, d, g_vars['params'], d_vars['params']


def test_cub_networks_have_the_official_names_shapes_and_counts():
  torch.manual_seed(0)
  nets = {'netG': ref.NetG(32, 100, 256, 256), 'netD': ref.NetD(32, 256),
          'netC': ref.NetC(32, 256)}
  torch_counts = {k: sum(p.numel() for p in v.parameters()) for k, v in nets.items()}
  assert torch_counts == OFFICIAL_COUNTS
  assert len(nets['netG'].state_dict()) == OFFICIAL_G_TENSORS

  g, d, g_params, d_params = _flax_params(32, 256, 100, 256)
  flax_trees = {'netG': g_params, 'netD': d_params['netD'], 'netC': d_params['netC']}
  for name, net in nets.items():
    # Same keys (through the documented key map) and the same shapes once
    # transposed: a converted official checkpoint fits exactly.
    expected = _shapes(ref.to_flax(net.state_dict()))
    assert _shapes(flax_trees[name]) == expected, name
    assert _count(flax_trees[name]) == OFFICIAL_COUNTS[name], name

  z, s = jnp.zeros((2, 100)), jnp.zeros((2, 256))
  image = jax.eval_shape(lambda p: g.apply({'params': p}, z, s), g_params)
  assert image.shape == (2, 256, 256, 3)
  features = jax.eval_shape(
      lambda p: d.apply({'params': p}, jnp.zeros((2, 256, 256, 3)), method=d.features),
      d_params)
  assert features.shape == (2, 4, 4, 256)
  logits = jax.eval_shape(lambda p: d.apply({'params': p}, jnp.zeros((2, 256, 256, 3)), s),
                          d_params)
  assert logits.shape == (2,)


def _tiny_nets(nf=4, size=64, z_dim=10, nef=12, seed=0, logit_scale=1.0):
  torch.manual_seed(seed)
  netG, netD, netC = ref.NetG(nf, z_dim, nef, size), ref.NetD(nf, size), ref.NetC(nf, nef)
  ref.randomize(netG, netD, netC, seed=seed)
  with torch.no_grad():
    netC.joint_conv[2].weight.mul_(logit_scale)
  g_params = ref.to_flax(netG.state_dict())
  d_params = {'netD': ref.to_flax(netD.state_dict()), 'netC': ref.to_flax(netC.state_dict())}
  return (netG, netD, netC), (g_params, d_params)


def _nchw(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def test_flax_networks_equal_torch_with_the_same_weights():
  nf, size, z_dim, nef = 4, 64, 10, 12
  (netG, netD, netC), (g_params, d_params) = _tiny_nets(nf, size, z_dim, nef)
  rng = np.random.default_rng(0)
  z = rng.standard_normal((3, z_dim)).astype(np.float32)
  sentence = rng.standard_normal((3, nef)).astype(np.float32)
  image = rng.uniform(-1, 1, (3, size, size, 3)).astype(np.float32)
  g, d = dfgan.NetG(nf, z_dim, size), dfgan.Discriminator(nf, size)

  fake = g.apply({'params': g_params}, z, sentence)
  features = d.apply({'params': d_params}, image, method=d.features)
  logits = d.apply({'params': d_params}, features, sentence, method=d.logits)
  with torch.no_grad():
    t_fake = netG(torch.from_numpy(z), torch.from_numpy(sentence))
    t_features = netD(_nchw(image))
    t_logits = netC(t_features, torch.from_numpy(sentence))
  # Not saturated by tanh, so the comparison sees the whole network.
  assert 0.05 < float(np.mean(np.abs(fake))) < 0.9
  np.testing.assert_allclose(fake, t_fake.numpy().transpose(0, 2, 3, 1), atol=2e-5)
  np.testing.assert_allclose(features, t_features.numpy().transpose(0, 2, 3, 1),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits, t_logits.numpy().reshape(-1), rtol=1e-4, atol=1e-4)


def test_upsample_conv3x3_is_conv_of_the_upsampled_input():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 5, 3, 4)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 4, 6)), jnp.float32)
  expected = torch_compat.conv_nhwc(jnp.repeat(jnp.repeat(x, 2, 1), 2, 2), kernel, 1, 1)
  np.testing.assert_allclose(fast_conv.upsample_conv3x3(x, kernel), expected, atol=1e-5)


@pytest.mark.parametrize('k,p', [(2.0, 6.0), (0.5, 2.0)])
def test_ma_gp_equals_the_formula_on_a_network_with_known_gradient(k, p):
  # score_i = a * sum(x_i^2) + w . s_i: d/dx_i = 2 a x_i, d/ds_i = w.
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((4, 3, 3, 2)), jnp.float32) * 0.3
  s = jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)
  a, w = 0.7, jnp.asarray(rng.standard_normal(5), jnp.float32) * 0.4

  def score(image, sentence):
    out = a * jnp.sum(image ** 2, axis=(1, 2, 3)) + sentence @ w
    return out, None

  penalty, logits, _ = dfgan_trainer.ma_gp(score, x, s, k, p)
  x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
  norms = np.sqrt(4 * a ** 2 * np.sum(x64 ** 2, axis=(1, 2, 3)) + np.sum(w64 ** 2))
  np.testing.assert_allclose(penalty, k * np.mean(norms ** p), rtol=1e-5)
  np.testing.assert_allclose(logits, score(x, s)[0], rtol=1e-6)


def test_truncated_sampling_noise_is_bounded():
  z = dfgan_trainer.sample_noise(jax.random.key(0), (4000, 8), True, 0.88)
  assert float(jnp.max(jnp.abs(z))) <= 2 * 0.88 + 1e-6
  assert float(jnp.max(jnp.abs(z))) > 1.7          # reaches the cut, not narrower
  plain = dfgan_trainer.sample_noise(jax.random.key(0), (4000, 8), False, 0.88)
  assert float(jnp.max(jnp.abs(plain))) > 2.5


def _fake_method(config, size, g, d):
  """A DfGan without its DAMSM: just what train_step uses."""
  method = dfgan_trainer.DfGan.__new__(dfgan_trainer.DfGan)
  method.config, method.sizes = config, [size]
  method.generator, method.discriminators = g, [d]
  o = config.optim
  # As TextToImageGan builds them from the config.
  method.txs = {'G': optax.adam(o.g_lr, o.b1, o.b2), 'D0': optax.adam(o.d_lr, o.b1, o.b2)}
  return method


def test_train_step_equals_the_official_step_in_torch():
  nf, size, z_dim, nef, batch = 4, 32, 10, 12, 4
  # Larger logits make MA-GP (~ logit scale^6) a sizeable part of D's loss
  # and gradient, so its double backprop shows in the comparison.
  (netG, netD, netC), (g_params, d_params) = _tiny_nets(nf, size, z_dim, nef, seed=3,
                                                        logit_scale=3.0)
  config = tiny_configs.load_config('dfgan')             # the cub (paper) settings
  config.model.update(ngf=nf, ndf=nf, z_dim=z_dim, nef=nef)
  g, d = dfgan.NetG(nf, z_dim, size), dfgan.Discriminator(nf, size)
  method = _fake_method(config, size, g, d)
  rng = np.random.default_rng(3)
  sentence = rng.standard_normal((batch, nef)).astype(np.float32)
  images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  method.encode_text = lambda state, ids, lengths: (None, jnp.asarray(sentence), None)
  state = state_lib.TrainState(
      step=jnp.asarray(5, jnp.int32), rng=jax.random.key_data(jax.random.key(7)),
      nets={'G': state_lib.new_net(g_params, method.txs['G']),
            'D0': state_lib.new_net(d_params, method.txs['D0'])})
  z = jax.random.normal(state.step_key(), (batch, z_dim))    # what the step draws
  batch_arrays = {'caption': jnp.zeros((batch, 3), jnp.int32),
                  'caption_len': jnp.full((batch,), 3), f'image{size}': jnp.asarray(images)}

  new_state, metrics = jax.jit(method.train_step)(state, batch_arrays)

  opt_g, opt_d = ref.optimizers(netG, netD, netC)
  real = _nchw(images.astype(np.float32) / 127.5 - 1.0)
  t_sentence = torch.from_numpy(sentence).requires_grad_()
  fake = netG(torch.from_numpy(np.array(z)), t_sentence)
  loss_d, penalty = ref.d_loss(netD, netC, real.requires_grad_(), t_sentence, fake)
  opt_d.zero_grad()
  loss_d.backward()
  # Copies: G's backward below accumulates into D's .grad in place.
  d_grads = {net: {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                   for n, p in module.named_parameters()}
             for net, module in (('netD', netD), ('netC', netC))}
  opt_d.step()
  loss_g = -netC(netD(fake), t_sentence).mean()
  opt_g.zero_grad()
  loss_g.backward()
  opt_g.step()

  np.testing.assert_allclose(metrics['D_loss'], loss_d.item(), rtol=1e-4)
  np.testing.assert_allclose(metrics['D_magp'], penalty.item(), rtol=1e-3)
  assert metrics['D_magp'] > 0.1 * metrics['D_loss']     # the penalty is in play
  # D's gradient, MA-GP's second-order part included, equals torch's.
  fake_images = g.apply({'params': g_params}, z, jnp.asarray(sentence))
  real_images = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
  grads, _ = jax.jit(jax.grad(dfgan_trainer.discriminator_loss, argnums=1, has_aux=True),
                     static_argnums=0)(d, d_params, real_images, fake_images,
                                       jnp.asarray(sentence))
  for net in ('netD', 'netC'):
    ours = flax.traverse_util.flatten_dict(grads[net], sep='/')
    theirs = flax.traverse_util.flatten_dict(ref.to_flax(d_grads[net]), sep='/')
    assert ours.keys() == theirs.keys()
    for path, value in theirs.items():
      scale = float(np.max(np.abs(value))) + 1e-12
      np.testing.assert_allclose(ours[path], value, rtol=1e-3, atol=1e-3 * scale,
                                 err_msg=f'{net}/{path}')
  np.testing.assert_allclose(metrics['G_loss'], loss_g.item(), rtol=1e-4, atol=1e-6)
  # Adam's first step moves each weight by about lr * sign(grad): equal new
  # weights mean equal gradient signs everywhere, including through MA-GP's
  # double backprop, and the same D in G's step.
  new = {'G': ref.to_flax(netG.state_dict()),
         'D0': {'netD': ref.to_flax(netD.state_dict()),
                'netC': ref.to_flax(netC.state_dict())}}
  for name, lr in (('D0', 4e-4), ('G', 1e-4)):
    ours = flax.traverse_util.flatten_dict(new_state.nets[name].params, sep='/')
    theirs = flax.traverse_util.flatten_dict(new[name], sep='/')
    old = flax.traverse_util.flatten_dict(state.nets[name].params, sep='/')
    moved = 0
    for path, value in theirs.items():
      np.testing.assert_allclose(ours[path], value, atol=0.05 * lr, err_msg=f'{name}/{path}')
      moved += int(np.sum(np.abs(value - old[path]) > 0.5 * lr))
    assert moved > 0.8 * _count(theirs), name     # (an unused conv_s stays)


def test_conditional_batch_norm_formula():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((6, 3, 3, 4)) * 2 + 1, jnp.float32)
  labels = jnp.asarray([0, 1, 2, 0, 1, 2])
  cbn = conditional_norm.ConditionalBatchNorm(num_classes=3)
  variables = cbn.init(jax.random.key(0), x, labels, train=True)
  x64 = np.asarray(x, np.float64)
  mean, var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
  x_hat = (x64 - mean) / np.sqrt(var + 1e-5)
  out, _ = cbn.apply(variables, x, labels, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(out, x_hat, atol=1e-4)    # deltas start at 0: plain BN
  params = flax.core.unfreeze(variables['params'])
  dgamma = rng.standard_normal((3, 4))
  dbeta = rng.standard_normal((3, 4))
  params['gamma_embedding']['embedding'] = jnp.asarray(dgamma, jnp.float32)
  params['beta_embedding']['embedding'] = jnp.asarray(dbeta, jnp.float32)
  params['scale'] = jnp.full((4,), 1.5)
  out, _ = cbn.apply({**variables, 'params': params}, x, labels, train=True,
                     mutable=['batch_stats'])
  idx = np.asarray(labels)
  expected = ((1.5 + dgamma[idx])[:, None, None] * x_hat + dbeta[idx][:, None, None])
  np.testing.assert_allclose(out, expected, atol=1e-4)
  # A sentence condition and a spatial (per-pixel) one both broadcast to x.
  for cond in (jnp.ones((6, 5)), jnp.ones((6, 3, 3, 5))):
    cbn = conditional_norm.ConditionalBatchNorm(hidden_features=None, zero_init=False)
    y, _ = cbn.init_with_output(jax.random.key(1), x, cond, train=True)
    assert y.shape == x.shape


def test_dfgan_config_refuses_several_image_sizes(data_dir, tmp_path):
  config = tiny_configs.gan('dfgan', data_dir, '')
  config.data.image_sizes = (64, 128)
  with pytest.raises(errors.ConfigError, match='one image size'):
    dfgan_trainer.DfGan(config, None, 8)



def test_tiny_dfgan_trains_evaluates_and_samples_on_shapes(damsm_dir, data_dir, tmp_path):
  config = tiny_configs.gan('dfgan', data_dir, damsm_dir)
  config.data.image_sizes = (32,)
  config.data.shapes.image_size = 32
  workdir = str(tmp_path)
  result = loop.train_and_evaluate(config, workdir, jax.devices()[:1])
  for key in ('D_loss', 'D_magp', 'D_mismatch', 'G_loss'):
    assert np.isfinite(result[key]), key
  assert 0.0 <= result['eval/damsm_image_to_text_top1'] <= 1.0
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_0000003.png'))
  setup, state, step = loop.restore_state(config, workdir, jax.devices()[:1])
  assert step == 3 and state.nets['G'].ema_params == ()    # no EMA officially
  from t2ijax.trainers import sampling
  config.sample.captions = 'a small red circle on the left|a large blue square at the top'
  config.sample.num_noise = 2
  out = sampling.sample_command(config, workdir)
  assert os.path.exists(out['grid'])
