"""Official AttnGAN / DM-GAN netG (and netD) state dicts -> Flax, against torch.

The torch networks are written from reference/attngan_family.md in
tests/torch_attngan_reference.py with the official key names and the official
attention padding-mask bug. Tiny widths, official topology: 3 stages
(64/128/256), 2 ResBlocks per refinement stage, CA GLU, 16 * ngf at 4x4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from t2ijax import errors
from t2ijax.convert import torch_attngan
from t2ijax.convert import torch_inception
from tests import torch_attngan_reference as ref

WIDTHS = dict(ngf=4, r_num=2, nef=8, ncf=6, z_dim=10, num_stages=3)
LENGTHS = (7, 6, 4, 2)  # unequal, sorted as official batches are


def _inputs(seed=0):
  """z, sentence, words (B, nef, T) zero at padding, padding mask, CA eps."""
  gen = torch.Generator().manual_seed(seed)
  batch, num_words = len(LENGTHS), max(LENGTHS)
  padding = torch.arange(num_words)[None, :] >= torch.tensor(LENGTHS)[:, None]
  words = torch.randn(batch, WIDTHS['nef'], num_words, generator=gen)
  words = words.masked_fill(padding[:, None, :], 0.0)
  return dict(z=torch.randn(batch, WIDTHS['z_dim'], generator=gen),
              sentence=torch.randn(batch, WIDTHS['nef'], generator=gen),
              words=words, padding=padding,
              eps=torch.randn(batch, WIDTHS['ncf'], generator=gen))


def _flax_inputs(inputs):
  return (jnp.asarray(inputs['z'].numpy()),
          jnp.asarray(inputs['sentence'].numpy()),
          jnp.asarray(inputs['words'].numpy().transpose(0, 2, 1)),
          jnp.asarray(~inputs['padding'].numpy()))


def _torch_generator(family, seed):
  model = ref.Generator(family, WIDTHS['ngf'], WIDTHS['r_num'], WIDTHS['nef'],
                        WIDTHS['ncf'], WIDTHS['z_dim'], WIDTHS['num_stages'])
  return ref.randomize_(model, seed).eval()


@pytest.fixture(scope='module', params=['attngan', 'dmgan'])
def converted(request, tmp_path_factory):
  """A random torch netG, its outputs, and its conversion via a saved .pth."""
  family = request.param
  model = _torch_generator(family, seed=1 if family == 'attngan' else 2)
  inputs = _inputs()
  with torch.no_grad():
    images, maps, mu, logvar = model(**inputs)
  # Saved through nn.DataParallel: keys carry the `module.` prefix.
  path = tmp_path_factory.mktemp(family) / 'netG.pth'
  torch.save(torch.nn.DataParallel(model).state_dict(), path)
  state_dict = torch_inception.load_state_dict(path)
  assert all(key.startswith('module.') for key in state_dict)
  variables = torch_attngan.generator_variables_from_state_dict(
      state_dict, family)
  return dict(family=family, model=model, inputs=inputs, state_dict=state_dict,
              variables=variables, images=[x.numpy() for x in images],
              maps=[x.numpy() for x in maps], mu=mu.numpy(),
              logvar=logvar.numpy())


def _apply(converted, official_mask_bug=True):
  topology = torch_attngan.generator_topology(converted['state_dict'])
  topology.pop('family')
  generator = torch_attngan.build_generator(
      converted['family'], official_mask_bug=official_mask_bug, **topology)
  eps = jnp.asarray(converted['inputs']['eps'].numpy())
  apply = jax.jit(lambda v, *a: generator.apply(v, *a, ca_noise=eps))
  return apply(converted['variables'], *_flax_inputs(converted['inputs']))


def test_topology_is_read_from_the_keys(converted):
  topology = torch_attngan.generator_topology(converted['state_dict'])
  assert topology == dict(family=converted['family'], **WIDTHS)


def test_every_stage_and_attention_map_match_torch(converted):
  out = _apply(converted)
  assert len(out['images']) == 3 and len(out['attention_maps']) == 2
  for stage, (image, expected) in enumerate(
      zip(out['images'], converted['images'])):
    expected = expected.transpose(0, 2, 3, 1)
    assert image.shape == expected.shape == (4, 64 * 2**stage,
                                             64 * 2**stage, 3)
    # Informative images: neither saturated nor flat.
    assert np.mean(np.abs(expected) < 0.95) > 0.5 and np.std(expected) > 0.05
    np.testing.assert_allclose(image, expected, atol=2e-5, rtol=1e-4,
                               err_msg=f'stage {stage + 1}')
  for stage, (attn, expected) in enumerate(
      zip(out['attention_maps'], converted['maps'])):
    np.testing.assert_allclose(attn, expected.transpose(0, 2, 3, 1),
                               atol=1e-5, rtol=1e-4,
                               err_msg=f'attention of stage {stage + 2}')
  np.testing.assert_allclose(out['mu'], converted['mu'], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out['logvar'], converted['logvar'], atol=1e-5,
                             rtol=1e-5)


def test_the_mask_bug_is_what_makes_them_match(converted):
  """With each caption's own mask the attention visibly departs from torch's."""
  out = _apply(converted, official_mask_bug=False)
  expected = converted['maps'][0].transpose(0, 2, 3, 1)
  assert np.max(np.abs(np.asarray(out['attention_maps'][0]) - expected)) > 1e-2


def test_variables_are_the_generator_trees(converted):
  variables = converted['variables']
  assert set(variables) == {'params', 'batch_stats'}
  flat_stats = jax.tree_util.tree_leaves_with_path(variables['batch_stats'])
  # The randomised running variances arrived (not the init's ones).
  var = variables['batch_stats']['h_net1']['fc_bn']['var']
  torch_var = converted['model'].h_net1.fc[1].running_var.numpy()
  np.testing.assert_array_equal(var, torch_var)
  assert all(leaf.dtype == np.float32 for _, leaf in flat_stats)


# --- Key and shape checks ------------------------------------------------------


@pytest.fixture(scope='module')
def attngan_state_dict():
  model = _torch_generator('attngan', seed=3)
  return {k: v.numpy() for k, v in model.state_dict().items()}


def test_mismatched_keys_are_all_named(attngan_state_dict):
  broken = dict(attngan_state_dict)
  del broken['h_net2.att.conv_context.weight']
  broken['h_net2.att.conv_sentence_vis.weight'] = np.zeros((4, 4, 1, 1))
  broken['h_net3.upsample.2.running_mean'] = np.zeros(3)
  with pytest.raises(errors.CheckpointError) as info:
    torch_attngan.attngan_generator_variables(broken)
  message = str(info.value)
  assert 'missing keys (1)' in message
  assert 'h_net2.att.conv_context.weight (4, 8, 1, 1)' in message
  assert 'unexpected keys (1)' in message
  assert 'h_net2.att.conv_sentence_vis.weight' in message
  assert 'h_net3.upsample.2.running_mean: has (3,), expected (8,)' in message
  assert 'Fix:' in message


def test_explicit_widths_are_checked(attngan_state_dict):
  with pytest.raises(errors.CheckpointError, match='wrong shape'):
    torch_attngan.attngan_generator_variables(attngan_state_dict, nef=16)


def test_wrong_family_names_the_right_kind(converted):
  other = 'attngan' if converted['family'] == 'dmgan' else 'dmgan'
  with pytest.raises(errors.CheckpointError,
                     match=f'--kind={converted["family"]}_netG'):
    torch_attngan.generator_variables_from_state_dict(
        converted['state_dict'], other)


def test_not_a_generator_is_rejected():
  with pytest.raises(errors.CheckpointError, match='Not an AttnGAN / DM-GAN netG'):
    torch_attngan.dmgan_generator_variables(
        {'encoder.weight': np.zeros((5, 3))})


# --- Discriminators ------------------------------------------------------------


@pytest.mark.parametrize('family, image_size', [('attngan', 64),
                                                ('dmgan', 128)])
def test_discriminator_logits_match_torch(family, image_size):
  ndf, nef = 2, 8
  model = ref.randomize_(ref.Discriminator(family, ndf, image_size, nef),
                         seed=4).eval()
  # Converted before the forward: the torch forward advances weight_u.
  state_dict = {'module.' + k: v.clone() for k, v in model.state_dict().items()}
  gen = torch.Generator().manual_seed(5)
  images = torch.rand(3, 3, image_size, image_size, generator=gen) * 2 - 1
  sentence = torch.randn(3, nef, generator=gen)
  with torch.no_grad():
    uncond, cond = model(images, sentence)
  variables = torch_attngan.discriminator_variables_from_state_dict(state_dict)
  expected_collections = {'params', 'spectral' if family == 'dmgan'
                          else 'batch_stats'}
  assert set(variables) == expected_collections
  discriminator = torch_attngan.build_discriminator(
      family, ndf=ndf, image_size=image_size, nef=nef)
  out = jax.jit(discriminator.apply)(
      variables, jnp.asarray(images.numpy().transpose(0, 2, 3, 1)),
      jnp.asarray(sentence.numpy()))
  np.testing.assert_allclose(out['uncond'], uncond.numpy(), atol=1e-5,
                             rtol=1e-4)
  np.testing.assert_allclose(out['cond'], cond.numpy(), atol=1e-5, rtol=1e-4)
  if family == 'dmgan':  # weight_v is accepted and ignored; u is carried over
    np.testing.assert_array_equal(
        variables['spectral']['img_code_s16']['conv_0']['u'],
        state_dict['module.img_code_s16.0.module.weight_u'].numpy())
