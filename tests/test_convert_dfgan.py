"""DF-GAN's official checkpoint -> Flax: the converted networks compute torch's outputs.

The torch NetG / NetD / NetC are written from the reference
(tests/torch_dfgan_reference.py), given random weights, and saved the way the
2022 code saves them: {'model': {'netG', 'netD', 'netC'}, 'optimizers', 'epoch'}
with DistributedDataParallel's `module.` prefix.
"""

import numpy as np
import pytest
import torch

from t2ijax import errors
from t2ijax.convert import kinds
from t2ijax.convert import torch_dfgan
from t2ijax.models import dfgan
from tests import torch_dfgan_reference as ref

NF, SIZE, Z_DIM, NEF = 4, 64, 10, 12


def _prefixed(module: torch.nn.Module) -> dict:
  return {f'module.{k}': v for k, v in module.state_dict().items()}


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """The torch nets and the path of their state_epoch file."""
  torch.manual_seed(0)
  netG, netD, netC = (ref.NetG(NF, Z_DIM, NEF, SIZE), ref.NetD(NF, SIZE),
                      ref.NetC(NF, NEF))
  ref.randomize(netG, netD, netC, seed=3)
  opt_g, opt_d = ref.optimizers(netG, netD, netC)
  path = tmp_path_factory.mktemp('dfgan') / 'state_epoch_007.pth'
  torch.save({'model': {'netG': _prefixed(netG), 'netD': _prefixed(netD),
                        'netC': _prefixed(netC)},
              'optimizers': {'optimizer_G': opt_g.state_dict(),
                             'optimizer_D': opt_d.state_dict()},
              'epoch': 7}, path)
  return dict(netG=netG.eval(), netD=netD.eval(), netC=netC.eval(), path=str(path))


def _inputs(batch=3, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((batch, Z_DIM)).astype(np.float32),
          rng.standard_normal((batch, NEF)).astype(np.float32),
          rng.uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype(np.float32))


def test_generator_from_the_state_epoch_file_equals_torch(saved):
  nets = torch_dfgan.load_checkpoint(saved['path'])
  variables, widths = kinds.convert('dfgan_netG', nets)
  assert widths == dict(family='dfgan', ngf=NF, z_dim=Z_DIM, nef=NEF, image_size=SIZE)
  model = kinds.build_model('dfgan_netG', widths)
  z, sentence, _ = _inputs()
  images = model.apply(variables, z, sentence)
  with torch.no_grad():
    expected = saved['netG'](torch.from_numpy(z), torch.from_numpy(sentence))
  # Not saturated by tanh, so the comparison sees the whole network.
  assert 0.05 < float(np.mean(np.abs(images))) < 0.9
  np.testing.assert_allclose(images, expected.numpy().transpose(0, 2, 3, 1), atol=2e-5)


def test_a_bare_netg_state_dict_converts_the_same(saved):
  from_file = kinds.convert('dfgan_netG', torch_dfgan.load_checkpoint(saved['path']))[0]
  bare = kinds.convert('dfgan_netG', saved['netG'].state_dict())[0]
  np.testing.assert_array_equal(bare['params']['fc']['kernel'],
                                from_file['params']['fc']['kernel'])


def test_discriminator_and_head_equal_torch(saved):
  nets = torch_dfgan.load_checkpoint(saved['path'])
  variables = torch_dfgan.discriminator_variables(nets['netD'], nets['netC'], SIZE)
  d = dfgan.Discriminator(NF, SIZE)
  _, sentence, image = _inputs(seed=1)
  logits = d.apply(variables, image, sentence)
  with torch.no_grad():
    features = saved['netD'](torch.from_numpy(image.transpose(0, 3, 1, 2).copy()))
    expected = saved['netC'](features, torch.from_numpy(sentence)).reshape(-1)
  np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_missing_and_unexpected_keys_are_named(saved):
  state = {k: v for k, v in saved['netG'].state_dict().items()
           if k != 'GBlocks.1.c2.bias'}
  state['GBlocks.1.extra.weight'] = torch.zeros(1)
  with pytest.raises(errors.CheckpointError) as info:
    kinds.convert('dfgan_netG', state)
  assert 'GBlocks.1.c2.bias' in str(info.value)
  assert 'GBlocks.1.extra.weight' in str(info.value)


def test_other_files_are_rejected_with_the_right_kind(tmp_path):
  with pytest.raises(errors.CheckpointError, match='attngan_netG'):
    kinds.convert('dfgan_netG', {'ca_net.fc.weight': np.zeros((4, 4))})
  path = tmp_path / 'list.pth'
  torch.save([torch.zeros(2)], path)
  with pytest.raises(errors.CheckpointError, match='not a DF-GAN checkpoint'):
    torch_dfgan.load_checkpoint(str(path))
  with pytest.raises(errors.CheckpointError, match='No checkpoint file'):
    torch_dfgan.load_checkpoint(str(tmp_path / 'absent.pth'))
