"""Tests of the AttnGAN / DM-GAN networks and their shared layers.

Sizes and parameter counts are the official ones (reference §3.2, §3.4, §4.2,
§4.3), checked with jax.eval_shape so no full-size array is allocated. The
attention-mask references are written here from the reference's description
of GlobalAttentionGeneral (§3.2 step 1, §3.3) in torch.
"""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from t2ijax.models import attngan
from t2ijax.models import dmgan
from t2ijax.nn import attention
from t2ijax.nn import layers
from t2ijax.nn import spectral_norm
from tests import param_trees

# (ngf, ndf, r_num) of the released configs.
ATTNGAN_CUB = dict(ngf=32, ndf=64, r_num=2)
ATTNGAN_COCO = dict(ngf=48, ndf=96, r_num=3)
NEF = 256
Z_DIM = 100





def _generator_inputs(batch, num_words, nef=NEF, z_dim=Z_DIM, lengths=None):
  z = jnp.zeros((batch, z_dim))
  sentence = jnp.zeros((batch, nef))
  words = jnp.zeros((batch, num_words, nef))
  if lengths is None:
    lengths = [num_words] * batch
  mask = attention.word_mask_from_lengths(jnp.array(lengths), num_words)
  return z, sentence, words, mask


def _abstract_generator(generator, batch=2, num_words=18):
  """eval_shape of init_with_output: (outputs, variables) as shapes."""
  inputs = _generator_inputs(batch, num_words)
  return jax.eval_shape(
      lambda: generator.init_with_output(param_trees.key(0), *inputs, ca_key=param_trees.key(1)))


def _abstract_discriminator(discriminator, batch=2):
  size = discriminator.image_size
  return jax.eval_shape(lambda: discriminator.init_with_output(
      param_trees.key(0), jnp.zeros((batch, size, size, 3)), jnp.zeros((batch, NEF))))


# --- Parameter counts --------------------------------------------------------


@pytest.mark.parametrize('generator, expected', [
    (attngan.Generator(ngf=32, r_num=2), 7_084_592),
    (attngan.Generator(ngf=48, r_num=3), 13_811_456),
    (dmgan.Generator(ngf=64, r_num=2), 21_449_042),
    (dmgan.Generator(ngf=64, r_num=3), 22_335_314),
], ids=['attngan_cub', 'attngan_coco', 'dmgan_cub', 'dmgan_coco'])
def test_generator_parameter_count(generator, expected):
  _, variables = _abstract_generator(generator)
  assert param_trees.count(variables['params']) == expected


@pytest.mark.parametrize('cls, ndf, size, expected', [
    (attngan.Discriminator, 64, 64, 6_313_730),
    (attngan.Discriminator, 64, 128, 19_424_002),
    (attngan.Discriminator, 64, 256, 71_858_946),
    (attngan.Discriminator, 96, 64, 13_304_450),
    (attngan.Discriminator, 96, 128, 42_800_258),
    (attngan.Discriminator, 96, 256, 160_774_274),
    # DM-GAN uses ndf 32 for both CUB and COCO.
    (dmgan.Discriminator, 32, 64, 1_878_242),
    (dmgan.Discriminator, 32, 128, 5_155_810),
    (dmgan.Discriminator, 32, 256, 18_264_546),
])
def test_discriminator_parameter_count(cls, ndf, size, expected):
  _, variables = _abstract_discriminator(cls(ndf=ndf, image_size=size))
  # DM-GAN's power-iteration vectors are state, not parameters.
  assert param_trees.count(variables['params']) == expected


# --- Output shapes -----------------------------------------------------------


@pytest.mark.parametrize('config', [ATTNGAN_CUB, ATTNGAN_COCO],
                         ids=['cub', 'coco'])
@pytest.mark.parametrize('family', [attngan, dmgan])
def test_generator_output_shapes(family, config):
  batch, num_words = 3, 12
  generator = family.Generator(ngf=config['ngf'], r_num=config['r_num'])
  out, _ = _abstract_generator(generator, batch, num_words)
  assert [x.shape for x in out['images']] == [
      (batch, 64, 64, 3), (batch, 128, 128, 3), (batch, 256, 256, 3)]
  assert [x.shape for x in out['attention_maps']] == [
      (batch, 64, 64, num_words), (batch, 128, 128, num_words)]
  assert out['mu'].shape == out['logvar'].shape == (batch, 100)


@pytest.mark.parametrize('num_stages', [1, 2])
def test_generator_fewer_stages(num_stages):
  out, variables = _abstract_generator(
      attngan.Generator(num_stages=num_stages))
  sizes = [x.shape[1] for x in out['images']]
  assert sizes == [64, 128][:num_stages]
  assert len(out['attention_maps']) == num_stages - 1
  assert f'img_net{num_stages + 1}' not in variables['params']


@pytest.mark.parametrize('family', [attngan, dmgan])
def test_generator_with_a_32_pixel_first_stage(family):
  """base_size 32 (the demos): stages at 32 and 64; the init stage starts at
  8 ngf with three upBlocks, so every later layer keeps its official shape."""
  ngf = 8
  small, small_vars = _abstract_generator(family.Generator(ngf=ngf, num_stages=2, base_size=32))
  official, official_vars = _abstract_generator(family.Generator(ngf=ngf, num_stages=2))
  assert [x.shape[1] for x in small['images']] == [32, 64]
  assert small['attention_maps'][0].shape[1] == 32
  init = small_vars['params']['h_net1']
  assert 'upsample4' not in init and init['upsample3']['conv']['kernel'].shape[-1] == 2 * ngf
  shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
  for name in ('h_net2', 'img_net1', 'img_net2', 'ca_net'):
    assert shapes(small_vars['params'][name]) == shapes(official_vars['params'][name]), name
  with pytest.raises(ValueError, match='base_size must be one of'):
    _abstract_generator(attngan.Generator(num_stages=1, base_size=16))


@pytest.mark.parametrize('cls, ndf', [(attngan.Discriminator, 64),
                                      (attngan.Discriminator, 96),
                                      (dmgan.Discriminator, 32)])
@pytest.mark.parametrize('size', [32, 64, 128, 256])
def test_discriminator_output_shapes(cls, ndf, size):
  out, _ = _abstract_discriminator(cls(ndf=ndf, image_size=size), batch=5)
  assert out['features'].shape == (5, 4, 4, 8 * ndf)
  assert out['uncond'].shape == out['cond'].shape == (5,)


def test_discriminator_without_uncond_head():
  out, variables = _abstract_discriminator(
      attngan.Discriminator(image_size=256, use_uncond=False))
  assert 'uncond' not in out and 'UNCOND_DNET' not in variables['params']


# --- Parameter paths (mirror the official state-dict keys) -------------------


def test_attngan_generator_parameter_paths():
  _, variables = _abstract_generator(attngan.Generator(ngf=32, r_num=2))
  params = param_trees.flat_shapes(variables['params'])
  stats = param_trees.flat_shapes(variables['batch_stats'])
  # torch key -> (flax path, shape); kernels are the transposed torch weights.
  expected = {
      'ca_net.fc.weight': ('ca_net/fc/kernel', (256, 400)),
      'ca_net.fc.bias': ('ca_net/fc/bias', (400,)),
      'h_net1.fc.0.weight': ('h_net1/fc/kernel', (200, 16384)),
      'h_net1.fc.1.weight': ('h_net1/fc_bn/scale', (16384,)),
      'h_net1.upsample1.1.weight': ('h_net1/upsample1/conv/kernel',
                                    (3, 3, 512, 512)),
      'h_net1.upsample4.2.bias': ('h_net1/upsample4/bn/bias', (64,)),
      'img_net1.img.0.weight': ('img_net1/img/kernel', (3, 3, 32, 3)),
      'h_net2.att.conv_context.weight': ('h_net2/att/conv_context/kernel',
                                         (256, 32)),
      'h_net3.att.conv_context.weight': ('h_net3/att/conv_context/kernel',
                                         (256, 32)),
      'h_net2.residual.1.block.0.weight': (
          'h_net2/residual_1/conv1/kernel', (3, 3, 64, 128)),
      'h_net3.residual.0.block.3.weight': (
          'h_net3/residual_0/conv2/kernel', (3, 3, 64, 64)),
      'h_net3.residual.0.block.4.weight': (
          'h_net3/residual_0/bn2/scale', (64,)),
      'h_net2.upsample.1.weight': ('h_net2/upsample/conv/kernel',
                                   (3, 3, 64, 64)),
      'img_net3.img.0.weight': ('img_net3/img/kernel', (3, 3, 32, 3)),
  }
  for torch_key, (path, shape) in expected.items():
    assert params.get(path) == shape, torch_key
  assert stats['h_net1/fc_bn/mean'] == (16384,)
  assert stats['h_net3/residual_1/bn1/var'] == (128,)


def test_discriminator_parameter_paths():
  _, variables = _abstract_discriminator(attngan.Discriminator(
      ndf=64, image_size=256))
  params = param_trees.flat_shapes(variables['params'])
  expected = {
      'img_code_s16/conv_0/kernel': (4, 4, 3, 64),
      'img_code_s16/conv_3/kernel': (4, 4, 256, 512),
      'img_code_s16/bn_3/scale': (512,),
      'img_code_s32/conv/kernel': (4, 4, 512, 1024),
      'img_code_s64/conv/kernel': (4, 4, 1024, 2048),
      'img_code_s64_1/conv/kernel': (3, 3, 2048, 1024),
      'img_code_s64_2/bn/scale': (512,),
      'UNCOND_DNET/outlogits/kernel': (4, 4, 512, 1),
      'UNCOND_DNET/outlogits/bias': (1,),
      'COND_DNET/jointConv/conv/kernel': (3, 3, 768, 512),
      'COND_DNET/jointConv/bn/bias': (512,),
      'COND_DNET/outlogits/bias': (1,),
  }
  for path, shape in expected.items():
    assert params.get(path) == shape, path
  assert 'img_code_s16/bn_0/scale' not in params  # no BN after the first conv
  assert 'img_code_s16/conv_1/bias' not in params


def test_dmgan_parameter_paths():
  _, variables = _abstract_generator(dmgan.Generator(ngf=64, r_num=2))
  params = param_trees.flat_shapes(variables['params'])
  expected = {
      'h_net2/A/kernel': (256, 1),
      'h_net2/B/kernel': (64, 1),
      'h_net2/M_r/kernel': (64, 128),
      'h_net2/M_w/kernel': (256, 128),
      'h_net2/M_w/bias': (128,),
      'h_net3/key/kernel': (128, 64),
      'h_net3/value/bias': (64,),
      'h_net3/response_gate/kernel': (1, 1, 128, 1),
      'h_net3/response_gate/bias': (1,),
      'h_net2/residual_1/conv1/kernel': (3, 3, 128, 256),
      'h_net1/fc/kernel': (200, 32768),
      'h_net1/upsample1/conv/kernel': (3, 3, 1024, 1024),
      'img_net2/img/kernel': (3, 3, 64, 3),
  }
  for path, shape in expected.items():
    assert params.get(path) == shape, path
  assert 'h_net2/A/bias' not in params

  _, variables = _abstract_discriminator(dmgan.Discriminator(image_size=256))
  params = param_trees.flat_shapes(variables['params'])
  spectral = param_trees.flat_shapes(variables['spectral'])
  assert params['img_code_s16/conv_0/kernel'] == (4, 4, 3, 32)
  assert params['img_code_s16/conv_0/bias'] == (32,)
  assert spectral['img_code_s16/conv_0/u'] == (32,)
  assert params['COND_DNET/jointConv/conv/kernel'] == (3, 3, 512, 256)
  assert spectral['COND_DNET/jointConv/conv/u'] == (256,)
  assert 'COND_DNET/outlogits/u' not in spectral  # outlogits stays plain
  assert 'batch_stats' not in variables


# --- Word attention and the official mask bug --------------------------------


def _torch_global_attention(h, words, weight, padding):
  """GlobalAttentionGeneral as described in reference §3.2/§3.3 (NCHW).

  h (B, C, H, W); words (B, nef, T); weight (C, nef, 1, 1); padding (B, T)
  bool, True at padded words. The mask is tiled with repeat(N, 1).
  """
  batch, channels, height, width = h.shape
  num_queries, num_words = height * width, words.shape[2]
  target = h.reshape(batch, channels, num_queries).transpose(1, 2)
  source = torch.nn.functional.conv2d(words.unsqueeze(3), weight).squeeze(3)
  logits = torch.bmm(target, source).reshape(batch * num_queries, num_words)
  logits = logits.masked_fill(padding.repeat(num_queries, 1), -float('inf'))
  attn = torch.softmax(logits, dim=1)
  attn = attn.reshape(batch, num_queries, num_words).transpose(1, 2)
  context = torch.bmm(source, attn)
  return (context.reshape(batch, channels, height, width),
          attn.reshape(batch, num_words, height, width))


def _attention_case(lengths, height=4, width=4, channels=8, nef=16, seed=0):
  """Random features with encoder-like zero padding; variables; mask."""
  rng = np.random.default_rng(seed)
  batch, num_words = len(lengths), max(lengths)
  mask = np.arange(num_words)[None, :] < np.array(lengths)[:, None]
  words = rng.normal(size=(batch, num_words, nef)).astype(np.float32)
  words *= mask[..., None]
  h = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
  return h, words, mask


def _run_word_attention(official_mask_bug, h, words, mask):
  module = attention.WordAttention(official_mask_bug=official_mask_bug)
  variables = module.init(param_trees.key(0), h, words, mask)
  context, attn = module.apply(variables, h, words, mask)
  kernel = np.asarray(variables['params']['conv_context']['kernel'])
  return np.asarray(context), np.asarray(attn), kernel


def test_mask_bug_reproduces_reference_example():
  lengths = [7, 6, 4, 2]  # sorted longest first, as official batches are
  h, words, mask = _attention_case(lengths)
  _, attn, _ = _run_word_attention(True, h, words, mask)
  # Image 0, pixel (0, 1) is masked with caption 1's padding: word 6 is out.
  assert attn[0, 0, 1, 6] == 0.0
  assert np.all(attn[0, 0, 1, :6] > 0)
  # Pixel (0, 0) uses caption 0's own mask: all 7 words.
  assert np.all(attn[0, 0, 0, :7] > 0)
  # The general rule: mask_used[b, q] = mask[(b * N + q) mod B].
  num_queries = h.shape[1] * h.shape[2]
  flat = attn.reshape(len(lengths), num_queries, -1)
  for b in range(len(lengths)):
    for q in range(num_queries):
      used = mask[(b * num_queries + q) % len(lengths)]
      assert np.all(flat[b, q][~used] == 0) and np.all(flat[b, q][used] > 0)


@pytest.mark.parametrize('official_mask_bug', [True, False])
def test_word_attention_matches_torch_description(official_mask_bug):
  h, words, mask = _attention_case([7, 6, 4, 2], height=4, width=6, seed=1)
  context, attn, kernel = _run_word_attention(official_mask_bug, h, words,
                                              mask)
  weight = torch.from_numpy(kernel.T.copy())[:, :, None, None]
  batch = len(mask)
  if official_mask_bug:
    torch_context, torch_attn = _torch_global_attention(
        torch.from_numpy(h).permute(0, 3, 1, 2),
        torch.from_numpy(words).permute(0, 2, 1), weight,
        torch.from_numpy(~mask))
  else:
    # The correct mask equals the torch code run on one caption at a time.
    parts = [_torch_global_attention(
        torch.from_numpy(h[b:b + 1]).permute(0, 3, 1, 2),
        torch.from_numpy(words[b:b + 1]).permute(0, 2, 1), weight,
        torch.from_numpy(~mask[b:b + 1])) for b in range(batch)]
    torch_context = torch.cat([p[0] for p in parts])
    torch_attn = torch.cat([p[1] for p in parts])
  np.testing.assert_allclose(
      context, torch_context.permute(0, 2, 3, 1).numpy(), rtol=1e-5,
      atol=1e-5)
  np.testing.assert_allclose(
      attn, torch_attn.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


def test_default_mask_uses_each_captions_own_padding():
  lengths = [7, 6, 4, 2]
  h, words, mask = _attention_case(lengths)
  _, attn, _ = _run_word_attention(False, h, words, mask)
  for b, length in enumerate(lengths):
    assert np.all(attn[b, ..., length:] == 0)
    assert np.all(attn[b, ..., :length] > 0)
  np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-6)


def _padded_word_gradient(module, variables, h, words, mask, **kwargs):
  """d(random projection of the outputs) / d(words) at padded positions."""

  def loss(words):
    out, attn = module.apply(variables, h, words, mask, **kwargs)
    probe_out = jax.random.normal(param_trees.key(1), out.shape)
    probe_attn = jax.random.normal(param_trees.key(2), attn.shape)
    return jnp.sum(out * probe_out) + jnp.sum(attn * probe_attn)

  # Nonzero padding, so that any use of it would show in the gradient.
  noisy = words + (~mask[..., None]) * 0.5
  grads = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(noisy)))
  return grads[~mask], grads[mask]


@pytest.mark.parametrize('module, kwargs', [
    (attention.WordAttention(), {}),
    (dmgan.MemoryStage(ngf=8, r_num=0), {'train': False}),
], ids=['attngan_attention', 'dmgan_memory'])
def test_attention_ignores_padded_words(module, kwargs):
  h, words, mask = _attention_case([5, 3, 2, 1], seed=2)
  variables = jax.jit(lambda: module.init(param_trees.key(0), h, words, mask, **kwargs))()
  padded, real = _padded_word_gradient(module, variables, h, words, mask,
                                       **kwargs)
  assert np.all(padded == 0.0)
  assert np.any(real != 0.0)
  # With the official bug, padded words of some captions leak in.
  buggy = module.clone(official_mask_bug=True)
  padded, _ = _padded_word_gradient(buggy, variables, h, words, mask,
                                    **kwargs)
  assert np.any(padded != 0.0)


# --- Layers ------------------------------------------------------------------


def test_conv2d_and_upsample_match_torch():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 8, 8, 5)).astype(np.float32)
  conv = layers.Conv2d(7, 4, strides=2, padding=1, use_bias=True)
  variables = conv.init(param_trees.key(0), x)
  kernel = np.array(variables['params']['kernel'])
  bias = np.array(variables['params']['bias'])
  expected = torch.nn.functional.conv2d(
      torch.from_numpy(x).permute(0, 3, 1, 2),
      torch.from_numpy(kernel).permute(3, 2, 0, 1), torch.from_numpy(bias),
      stride=2, padding=1).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(conv.apply(variables, x), expected, rtol=1e-5,
                             atol=1e-5)
  up = torch.nn.functional.interpolate(
      torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=2,
      mode='nearest').permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(layers.upsample_nearest_2x(x), up)


def _torch_glu(x):
  half = x.shape[1] // 2
  return x[:, :half] * torch.sigmoid(x[:, half:])


def test_init_stage_matches_torch_description():
  """INIT_STAGE_G per reference §3.2: fc, BN1d, GLU, channel-major view, 4
  upBlocks; both in training mode (batch statistics)."""
  channels, batch = 32, 4
  code = np.random.default_rng(4).normal(size=(batch, 12)).astype(np.float32)
  stage = attngan.InitStage(channels)
  variables = jax.jit(lambda: stage.init(param_trees.key(0), code, train=False))()
  out, _ = jax.jit(functools.partial(
      stage.apply, train=True, mutable=['batch_stats']))(variables, code)
  params = jax.tree_util.tree_map(lambda x: torch.from_numpy(np.array(x)),
                                  variables['params'])

  def batch_norm(x, bn):
    return torch.nn.functional.batch_norm(
        x, None, None, bn['scale'], bn['bias'], training=True, eps=1e-5)

  x = torch.from_numpy(code) @ params['fc']['kernel']
  x = _torch_glu(batch_norm(x, params['fc_bn']))
  x = x.view(batch, channels, 4, 4)
  for i in range(1, 5):
    block = params[f'upsample{i}']
    x = torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest')
    x = torch.nn.functional.conv2d(
        x, block['conv']['kernel'].permute(3, 2, 0, 1), padding=1)
    x = _torch_glu(batch_norm(x, block['bn']))
  assert out.shape == (batch, 64, 64, channels // 16)
  np.testing.assert_allclose(out, x.permute(0, 2, 3, 1).numpy(), rtol=1e-4,
                             atol=1e-4)


def test_glu_and_conditioning_augmentation():
  x = jnp.array([[1.0, 2.0, 0.0, -1.0]])
  np.testing.assert_allclose(layers.glu(x),
                             [[1.0 * 0.5, 2.0 * jax.nn.sigmoid(-1.0)]],
                             rtol=1e-6)
  ca = layers.ConditioningAugmentation(condition_dim=3)
  sentence = jax.random.normal(param_trees.key(0), (2, 16))
  noise = jax.random.normal(param_trees.key(1), (2, 3))
  variables = ca.init(param_trees.key(2), sentence, noise=noise)
  assert variables['params']['fc']['kernel'].shape == (16, 12)
  c, mu, logvar = ca.apply(variables, sentence, noise=noise)
  np.testing.assert_allclose(c, mu + jnp.exp(0.5 * logvar) * noise,
                             rtol=1e-6)
  c_key, _, _ = ca.apply(variables, sentence, key=param_trees.key(3))
  assert not np.allclose(c_key, c)
  with pytest.raises(ValueError, match='exactly one'):
    ca.apply(variables, sentence)


def test_batch_norm_uses_torch_defaults():
  bn = layers.batch_norm(True, name='bn')
  assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)


# --- Spectral norm -----------------------------------------------------------


def test_spectral_conv_power_iteration():
  x = jax.random.normal(param_trees.key(0), (2, 8, 8, 3))
  conv = spectral_norm.SpectralConv2d(6, 3, padding=1)
  variables = conv.init(param_trees.key(1), x)
  kernel = np.asarray(variables['params']['kernel'], np.float64)
  u0 = np.asarray(variables['spectral']['u'], np.float64)
  np.testing.assert_allclose(np.linalg.norm(u0), 1.0, rtol=1e-6)

  # One step as described: W (out, fan_in); v = l2n(W^T u); u = l2n(W v).
  matrix = kernel.reshape(-1, 6).T
  v = matrix.T @ u0
  v /= np.linalg.norm(v) + 1e-12
  u1 = matrix @ v
  u1 /= np.linalg.norm(u1) + 1e-12
  sigma = u1 @ matrix @ v
  plain = layers.Conv2d(6, 3, padding=1)
  expected = plain.apply(
      {'params': {'kernel': kernel / sigma}}, np.asarray(x, np.float64))
  expected = expected + np.asarray(variables['params']['bias'])

  # Eval: same output, u unchanged.
  np.testing.assert_allclose(conv.apply(variables, x), expected, rtol=1e-4,
                             atol=1e-5)
  # Train: same output, u advanced once.
  out, state = conv.apply(variables, x, mutable=['spectral'])
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state['spectral']['u'], u1, rtol=1e-5,
                             atol=1e-6)

  # Repeated training calls converge to the top singular value.
  def step(spectral, _):
    _, state = conv.apply({**variables, 'spectral': spectral}, x,
                          mutable=['spectral'])
    return state['spectral'], None

  spectral, _ = jax.lax.scan(step, variables['spectral'], None, length=200)
  u = np.asarray(spectral['u'], np.float64)
  v = matrix.T @ u
  v /= np.linalg.norm(v)
  top = np.linalg.svd(matrix, compute_uv=False)[0]
  np.testing.assert_allclose(u @ matrix @ v, top, rtol=1e-4)


def test_spectral_norm_passes_no_gradient_to_u():
  x = jax.random.normal(param_trees.key(0), (3, 5))
  dense = spectral_norm.SpectralDense(4)
  variables = dense.init(param_trees.key(1), x)
  grads = jax.grad(lambda v: jnp.sum(dense.apply(v, x) ** 2))(variables)
  assert np.all(np.asarray(grads['spectral']['u']) == 0.0)
  assert np.any(np.asarray(grads['params']['kernel']) != 0.0)


# --- A tiny 3-stage model runs forward and backward under jit ----------------


def _random_variables(abstract, seed=0):
  """Concrete variables for abstract ones, without compiling an init.

  Kernels and biases N(0, 0.1), BN scales 1 + N(0, 0.1), running means 0 and
  variances 1, power-iteration vectors random unit vectors.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'mean':
      return np.zeros(leaf.shape, np.float32)
    if name == 'var':
      return np.ones(leaf.shape, np.float32)
    value = rng.normal(size=leaf.shape).astype(np.float32)
    if name == 'u':
      return value / np.linalg.norm(value)
    return 0.1 * value + (1.0 if name == 'scale' else 0.0)

  return jax.tree_util.tree_map_with_path(fill, abstract)


# AttnGAN at all three stages; DM-GAN at two (its memory stage is the same
# code at every size) to keep the compile time of the suite down.
@pytest.mark.parametrize('family, num_stages', [(attngan, 3), (dmgan, 2)],
                         ids=['attngan', 'dmgan'])
def test_tiny_train_step_under_jit(family, num_stages):
  batch, num_words, nef, z_dim = 2, 5, 32, 16
  sizes = [64, 128, 256][:num_stages]
  generator = family.Generator(ngf=8, r_num=1, z_dim=z_dim, ncf=8, nef=nef,
                               num_stages=num_stages, official_mask_bug=True)
  # The last stage's D is the largest; the others share its code.
  discriminator = family.Discriminator(ndf=4, image_size=sizes[-1], nef=nef)
  z = jax.random.normal(param_trees.key(0), (batch, z_dim))
  sentence = jax.random.normal(param_trees.key(1), (batch, nef))
  words = jax.random.normal(param_trees.key(2), (batch, num_words, nef))
  mask = attention.word_mask_from_lengths(jnp.array([5, 3]), num_words)
  words = words * mask[..., None]
  inputs = (z, sentence, words, mask)
  # Variables from shapes alone: compiling the inits of a 256x256 model
  # would cost more than the train step itself (init is covered above).
  g_vars = _random_variables(jax.eval_shape(
      lambda: generator.init(param_trees.key(3), *inputs, ca_key=param_trees.key(4))))
  d_vars = _random_variables(jax.eval_shape(lambda: discriminator.init(
      param_trees.key(5), jnp.zeros((batch, sizes[-1], sizes[-1], 3)), sentence)))
  mutable = ['batch_stats', 'spectral']

  def generator_loss(g_params):
    out, g_state = generator.apply({**g_vars, 'params': g_params}, *inputs,
                                   ca_key=param_trees.key(6), train=True,
                                   mutable=mutable)
    logits, d_state = discriminator.apply(
        d_vars, out['images'][-1], sentence, train=True, mutable=mutable)
    loss = (jnp.mean(jax.nn.softplus(-logits['uncond']))
            + jnp.mean(jax.nn.softplus(-logits['cond'])))
    # Stand-ins for the other discriminators' terms.
    loss += sum(jnp.mean(image**2) for image in out['images'][:-1])
    return loss, (out, g_state, d_state)

  grads, (out, g_state, d_state) = jax.jit(jax.grad(generator_loss, has_aux=True))(
      g_vars['params'])
  assert [x.shape[1] for x in out['images']] == sizes
  assert all(np.all(np.abs(np.asarray(x)) <= 1.0) for x in out['images'])
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  # Every stage is trained, the refinement stages through the attention too.
  for stage in range(1, num_stages + 1):
    assert np.any(np.asarray(grads[f'img_net{stage}']['img']['kernel']) != 0)
  attention_layer = 'att' if family is attngan else 'key'
  assert np.any(np.asarray(jax.tree_util.tree_leaves(
      grads[f'h_net{num_stages}'][attention_layer])[0]) != 0)
  # Train mode moved the running statistics.
  assert not np.allclose(g_state['batch_stats']['h_net1']['fc_bn']['mean'],
                         g_vars['batch_stats']['h_net1']['fc_bn']['mean'])
  if family is dmgan:  # and the power iteration advanced
    assert not np.allclose(d_state['spectral']['img_code_s16']['conv_0']['u'],
                           d_vars['spectral']['img_code_s16']['conv_0']['u'])


@pytest.mark.parametrize('sizes', [[32, 128], [16, 32], [128, 256]])
def test_trainer_rejects_stage_sizes_the_generator_cannot_make(sizes):
  from t2ijax import errors
  from t2ijax.trainers import attngan as attngan_trainer
  from t2ijax.trainers import sdgan as sdgan_trainer
  trainer = types.SimpleNamespace(config=types.SimpleNamespace(model=None), sizes=sizes)
  with pytest.raises(errors.ConfigError, match='each stage doubles the last'):
    attngan_trainer.AttnGan.make_generator(trainer)
  with pytest.raises(errors.ConfigError, match="SD-GAN's stages are 64, 128, 256"):
    sdgan_trainer.SdGan.make_generator(trainer)
