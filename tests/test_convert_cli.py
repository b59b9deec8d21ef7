"""`python -m t2ijax.convert` end to end: official-style files -> a workdir that
`t2ijax.main --mode=sample` runs, with the torch generator's images.

Everything is made here: a fake CUB layout with its captions.pickle
(tests/fake_layouts.py), a torch DAMSM text encoder over that vocabulary, an
image encoder state dict with the official 473 keys (random values), and a
tiny DM-GAN netG of the official topology (tests/torch_attngan_reference.py).
"""

import json
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest
import torch
from PIL import Image

from t2ijax import errors
from t2ijax import images as images_lib
from t2ijax import main as t2ijax_main
from t2ijax.convert import kinds
from t2ijax.convert import workdir as converted_workdir
from t2ijax.data import text
from t2ijax.encoders import damsm
from t2ijax.trainers import gan
from tests import fake_layouts
from tests import tiny_configs
from tests import torch_attngan_reference as ref

NEF, EMBEDDING_DIM = 8, 6
# A tiny netG of the official topology at two stages (64, 128; the third is
# the same code, covered by test_convert_generators.py); the CUB config is
# told its widths.
GENERATOR = dict(ngf=4, r_num=2, ncf=6, z_dim=10, num_stages=2)
CONFIG_OVERRIDES = {
    'model.ngf': 4, 'model.ndf': 2, 'model.ncf': 6, 'model.z_dim': 10,
    'model.num_stages': 2, 'data.image_sizes': (64, 128),
    'data.captions_per_image': 3, 'data.num_parallel_calls': 2,
    'train.batch_size': 8, 'checkpoint.use_async': False,
}
# Unequal lengths in no particular order, so the mask bug matters.
CAPTIONS = ('a bird with red wings', 'blue bird',
            'this small bird has a white belly and a black tail',
            'green wings and short beak')


def _image_encoder_state_dict(seed: int) -> dict[str, torch.Tensor]:
  """A CNN_ENCODER state dict: every official key, random values."""
  model = damsm.ImageEncoder(nef=NEF, backbone='inception_v3')
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 299, 299, 3), np.float32))
  rng = np.random.default_rng(seed)
  state_dict = {}
  for path, leaf in flax.traverse_util.flatten_dict(abstract).items():
    _, *modules, name = path
    modules = modules[1:] if modules[0] == 'backbone' else modules
    tensor = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
              'mean': 'running_mean', 'var': 'running_var'}[name]
    shape = leaf.shape
    if name == 'kernel':  # HWIO -> OIHW, (in, out) -> (out, in)
      shape = ((shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4
               else shape[::-1])
    value = rng.uniform(0.5, 1.5, shape) if name == 'var' else (
        0.05 * rng.standard_normal(shape))
    state_dict['.'.join(modules + [tensor])] = torch.from_numpy(
        value.astype(np.float32))
  assert len(state_dict) == 473  # as the released image_encoder*.pth
  return state_dict


@pytest.fixture(scope='module')
def official(tmp_path_factory):
  """Fake CUB data and the official-style files, with their torch models."""
  root = tmp_path_factory.mktemp('official')
  data = fake_layouts.make_fake_cub(str(root / 'birds'), captions_per_image=3)
  captions_pickle = os.path.join(data.root, 'captions.pickle')
  vocab = text.read_captions_pickle(captions_pickle)[2]
  torch.manual_seed(0)
  text_encoder = ref.RnnEncoder(len(vocab), EMBEDDING_DIM, NEF).eval()
  netg = ref.randomize_(ref.Generator('dmgan', GENERATOR['ngf'],
                                      GENERATOR['r_num'], NEF,
                                      GENERATOR['ncf'], GENERATOR['z_dim'],
                                      GENERATOR['num_stages']), seed=7).eval()
  with torch.no_grad():  # contrast: tanh images spanning most of [-1, 1]
    for stage in range(1, GENERATOR['num_stages'] + 1):
      getattr(netg, f'img_net{stage}').img[0].weight.mul_(6.0)
  files = {'text_encoder': root / 'text_encoder200.pth',
           'image_encoder': root / 'image_encoder200.pth',
           'netG': root / 'bird_DMGAN.pth'}
  torch.save(text_encoder.state_dict(), files['text_encoder'])
  torch.save(_image_encoder_state_dict(seed=1), files['image_encoder'])
  torch.save(netg.state_dict(), files['netG'])
  return dict(root=root, data=data, captions=captions_pickle, vocab=vocab,
              text_encoder=text_encoder, netg=netg,
              files={k: str(v) for k, v in files.items()})


def _cli(*args):
  """Runs python -m t2ijax.convert; returns (exit code, stdout + stderr)."""
  result = subprocess.run(
      [sys.executable, '-m', 't2ijax.convert', *args],
      cwd=tiny_configs.ROOT, capture_output=True, text=True, timeout=300,
      check=False)
  return result.returncode, result.stdout + result.stderr


def _config(official, data_dir):
  config = tiny_configs.load_config('dmgan', 'cub')
  tiny_configs.apply(config, CONFIG_OVERRIDES)
  config.data.manual_dir = official['data'].root
  config.data.data_dir = data_dir
  return config


@pytest.fixture(scope='module')
def gan_workdir(official, data_dir, tmp_path_factory):
  dst = str(tmp_path_factory.mktemp('converted') / 'dmgan_cub')
  files = official['files']
  code, output = _cli(
      '--kind=dmgan_netG', f'--src={files["netG"]}', f'--dst={dst}',
      f'--text_encoder={files["text_encoder"]}',
      f'--image_encoder={files["image_encoder"]}',
      f'--captions={official["captions"]}', '--config=configs/dmgan.py:cub',
      *tiny_configs.as_flags(CONFIG_OVERRIDES),
      f'--config.data.manual_dir={official["data"].root}',
      f'--config.data.data_dir={data_dir}')
  assert code == 0, output
  assert 'python -m t2ijax.main --config=configs/dmgan.py:cub' in output
  return dst


def test_workdir_layout_and_settings(gan_workdir, data_dir):
  info = converted_workdir.read_info(gan_workdir)
  assert info['kind'] == 'dmgan_netG' and info['image_encoder']
  assert info['generator'] == dict(nef=NEF, **GENERATOR)
  assert info['settings']['model.official_mask_bug'] is True
  assert set(info['sources']) == {'netG', 'text_encoder', 'image_encoder',
                                  'captions'}
  damsm_dir = os.path.join(gan_workdir, 'damsm')
  for directory in (gan_workdir, damsm_dir):
    assert os.listdir(os.path.join(directory, 'checkpoints')) == ['0']
    assert os.path.isfile(os.path.join(directory, 'vocab.json'))
  with open(os.path.join(damsm_dir, 'config.json')) as f:
    damsm_config = json.load(f)
  assert damsm_config['model']['nef'] == NEF
  assert damsm_config['model']['backbone'] == 'inception_v3'
  # What main.run does before anything else: the config gets what it needs.
  config = tiny_configs.load_config('dmgan', 'cub')
  config.data.data_dir = data_dir
  converted_workdir.apply_settings(config, gan_workdir, 'sample')
  assert config.model.official_mask_bug
  assert config.damsm.workdir == os.path.abspath(damsm_dir)
  assert config.data.data_dir == data_dir  # given values are kept


def _torch_images(official, config):
  """The torch text encoder and netG on what --mode=sample feeds its G."""
  vocab, k = official['vocab'], config.sample.num_noise
  ids = [vocab.encode(c)[:config.data.max_words] for c in CAPTIONS]
  lengths = torch.tensor([len(x) for x in ids])
  padded = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
  for row, x in enumerate(ids):
    padded[row, :len(x)] = torch.from_numpy(x.astype(np.int64))
  # The noise sample_command draws (jax keys), handed to torch.
  key = jax.random.key(config.sample.seed)
  z = np.asarray(jax.random.normal(key, (len(ids) * k, config.model.z_dim)))
  eps = np.asarray(jax.random.normal(jax.random.fold_in(key, 1),
                                     (len(ids) * k, config.model.ncf)))
  # As the official code: the batch sorted by length, longest first (the mask
  # bug depends on the order); eps belongs to the sorted positions.
  order = torch.from_numpy(np.argsort(-np.repeat(lengths.numpy(), k), kind='stable'))
  unsort = torch.argsort(order)
  with torch.no_grad():
    words, sentence = official['text_encoder'](padded, lengths)
    rep = lambda x: x.repeat_interleave(k, 0)[order]
    images, _, _, _ = official['netg'](
        torch.from_numpy(z)[order], rep(sentence), rep(words), rep(padded == 0),
        torch.from_numpy(eps))
  return [x[unsort].numpy().transpose(0, 2, 3, 1) for x in images]


def test_sample_from_the_converted_workdir_matches_torch(
    official, gan_workdir, data_dir):
  config = _config(official, data_dir)
  config.sample.captions = '|'.join(CAPTIONS)
  config.sample.num_noise = 1
  result = t2ijax_main.run(config, gan_workdir, 'sample')
  assert result['step'] == 0
  grid = np.asarray(Image.open(result['grid']))
  torch_images = _torch_images(official, config)
  expected = gan.stage_grid(None, torch_images)
  assert grid.shape == expected.shape == (4 * 130 + 2, 2 * 130 + 2, 3)
  # uint8 truncation can flip a level where float32 sums differ in the last bit.
  difference = np.abs(grid.astype(int) - expected.astype(int))
  assert difference.max() <= 1 and np.mean(difference > 0) < 1e-3
  # Pictures that vary by many levels, so equality within one level means
  # something (random weights give low-contrast images).
  for stage in torch_images:
    assert np.std(images_lib.to_uint8(stage)) > 20


def test_eval_from_the_converted_workdir(official, gan_workdir, data_dir):
  """--mode=eval: the converted image encoder judges the converted G."""
  from t2ijax.trainers import loop  # pylint: disable=g-import-not-at-top
  config = _config(official, data_dir)
  tiny_configs.apply(config, {'eval.batch_size': 2, 'eval.num_batches': 1})
  # What t2ijax.main.run does first; devices[:1] for the 2-image test split.
  converted_workdir.apply_settings(config, gan_workdir, 'eval')
  metrics = loop.evaluate(config, gan_workdir, jax.devices()[:1])
  assert 0.0 <= metrics['eval/damsm_image_to_text_top1'] <= 1.0
  assert os.path.isfile(os.path.join(gan_workdir, 'eval_step0.json'))


def test_converted_damsm_encoders_are_the_files(official, gan_workdir):
  from t2ijax.encoders import damsm_loader  # pylint: disable=g-import-not-at-top
  frozen = damsm_loader.load(os.path.join(gan_workdir, 'damsm'),
                             official['vocab'])
  embedding = frozen.text_variables['params']['encoder']['embedding']
  np.testing.assert_array_equal(
      embedding, official['text_encoder'].encoder.weight.detach().numpy())
  image_sd = torch.load(official['files']['image_encoder'])
  np.testing.assert_array_equal(
      frozen.image_variables['batch_stats']['backbone']['Mixed_7c'][
          'branch_pool']['bn']['var'],
      image_sd['Mixed_7c.branch_pool.bn.running_var'].numpy())


def test_single_file_kind_round_trips(official, tmp_path):
  """What the CLI does for --kind=damsm_text (in-process: same function)."""
  dst = str(tmp_path / 'text')
  kinds.convert_file('damsm_text', official['files']['text_encoder'], dst,
                     captions=official['captions'])
  model, variables, info = kinds.load(dst)
  assert info['model'] == dict(n_words=len(official['vocab']),
                               embedding_dim=EMBEDDING_DIM, nef=NEF)
  assert kinds.load_vocab(dst) == official['vocab']
  ids = np.array([[3, 1, 4, 0], [2, 5, 0, 0]])
  lengths = np.array([3, 2])
  out = model.apply(variables, ids, lengths)
  with torch.no_grad():
    words, sentence = official['text_encoder'](torch.from_numpy(ids),
                                               torch.from_numpy(lengths))
  np.testing.assert_allclose(out['sentence'], sentence.numpy(), atol=1e-5)
  np.testing.assert_allclose(out['words'][:, :3],
                             words.numpy().transpose(0, 2, 1), atol=1e-5)
  with pytest.raises(errors.ConfigError, match='captions.pickle'):
    kinds.convert_file('damsm_text', official['files']['text_encoder'],
                       str(tmp_path / 'no_vocab'))
  with pytest.raises(errors.ConfigError, match='not empty'):
    kinds.convert_file('damsm_text', official['files']['text_encoder'], dst,
                       captions=official['captions'])


def test_fid_inception_file_is_what_the_evaluation_reads(official, tmp_path):
  """--kind=fid_inception writes what --config.eval.inception_weights takes."""
  from t2ijax.evaluation import features  # pylint: disable=g-import-not-at-top
  # pytorch-fid's file has the same Inception keys as the DAMSM backbone, and
  # a 1008-way fc.
  backbone = {k: v for k, v in torch.load(
      official['files']['image_encoder']).items() if not k.startswith('emb_')}
  gen = torch.Generator().manual_seed(2)
  backbone['fc.weight'] = torch.randn(1008, 2048, generator=gen)
  backbone['fc.bias'] = torch.randn(1008, generator=gen)
  src = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
  torch.save(backbone, src)
  dst = str(tmp_path / 'fid')
  path = kinds.convert_file('fid_inception', str(src), dst)
  model, variables = features.load_fid_inception(path)
  assert model.flavor == 'fid' and model.num_classes == 1008
  np.testing.assert_array_equal(variables['params']['fc']['kernel'],
                                backbone['fc.weight'].numpy().T)
  assert kinds.load(dst)[2]['model'] == {'flavor': 'fid', 'num_classes': 1008}


def test_wrong_kind_names_the_right_one_and_writes_nothing(official, tmp_path):
  """What --kind=attngan_netG does with a DM-GAN file (in-process: same call)."""
  from t2ijax.convert import torch_inception  # pylint: disable=g-import-not-at-top
  load = torch_inception.load_state_dict
  files, dst = official['files'], str(tmp_path / 'a')
  with pytest.raises(errors.CheckpointError, match='--kind=dmgan_netG'):
    converted_workdir.write_gan_workdir(
        dst, 'attngan_netG', tiny_configs.load_config('attngan', 'cub'),
        tiny_configs.load_config('damsm', 'cub'), load(files['netG']),
        load(files['text_encoder']), None, official['vocab'], {})
  assert not os.path.exists(dst)  # nothing half-written


def test_workdir_without_image_encoder_refuses_eval(tmp_path):
  directory = str(tmp_path)
  with open(os.path.join(directory, converted_workdir.CONVERTED_FILE), 'w') as f:
    json.dump({'layout': 'workdir', 'kind': 'dmgan_netG', 'method': 'dmgan',
               'data_source': 'cub', 'image_encoder': False, 'settings': {}},
              f)
  config = tiny_configs.load_config('dmgan', 'cub')
  converted_workdir.apply_settings(config, directory, 'sample')
  with pytest.raises(errors.ConfigError, match='--image_encoder'):
    converted_workdir.apply_settings(config, directory, 'eval')
  with pytest.raises(errors.ConfigError, match='configs/dmgan.py'):
    converted_workdir.apply_settings(
        tiny_configs.load_config('attngan', 'cub'), directory, 'sample')
  with pytest.raises(errors.ConfigError, match='configs/dmgan.py:cub'):
    converted_workdir.apply_settings(
        tiny_configs.load_config('dmgan', 'coco'), directory, 'sample')


# --- DF-GAN: a state_epoch file becomes a workdir that samples torch's images ---

DFGAN_OVERRIDES = {
    'model.ngf': 4, 'model.ndf': 4, 'model.z_dim': 10, 'data.image_sizes': (64,),
    'data.captions_per_image': 3, 'data.num_parallel_calls': 2,
    'train.batch_size': 8, 'checkpoint.use_async': False,
}


def test_dfgan_state_epoch_file_samples_torch_images(official, data_dir, tmp_path):
  from tests import torch_dfgan_reference as dfgan_ref  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  netg, netd, netc = (dfgan_ref.NetG(4, 10, NEF, 64), dfgan_ref.NetD(4, 64),
                      dfgan_ref.NetC(4, NEF))
  dfgan_ref.randomize(netg, netd, netc, seed=5)
  src = tmp_path / 'state_epoch_100.pth'
  torch.save({'model': {name: {f'module.{k}': v for k, v in net.state_dict().items()}
                        for name, net in (('netG', netg), ('netD', netd), ('netC', netc))},
              'epoch': 100}, src)
  dst = str(tmp_path / 'dfgan_cub')
  files = official['files']
  code, output = _cli(
      '--kind=dfgan_netG', f'--src={src}', f'--dst={dst}',
      f'--text_encoder={files["text_encoder"]}',
      f'--image_encoder={files["image_encoder"]}',
      f'--captions={official["captions"]}', '--config=configs/dfgan.py:cub',
      *tiny_configs.as_flags(DFGAN_OVERRIDES),
      f'--config.data.manual_dir={official["data"].root}',
      f'--config.data.data_dir={data_dir}')
  assert code == 0, output
  info = converted_workdir.read_info(dst)
  assert info['generator'] == dict(ngf=4, z_dim=10, nef=NEF, image_size=64)
  assert info['discriminator'] and 'model.official_mask_bug' not in info['settings']

  config = tiny_configs.load_config('dfgan', 'cub')
  tiny_configs.apply(config, DFGAN_OVERRIDES)
  config.data.manual_dir, config.data.data_dir = official['data'].root, data_dir
  config.sample.captions = '|'.join(CAPTIONS)
  config.sample.num_noise = 1
  result = t2ijax_main.run(config, dst, 'sample')
  grid = np.asarray(Image.open(result['grid']))

  # torch: the DAMSM sentence of each caption and the truncated noise drawn.
  vocab = official['vocab']
  ids = [vocab.encode(c)[:config.data.max_words] for c in CAPTIONS]
  lengths = torch.tensor([len(x) for x in ids])
  padded = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
  for row, x in enumerate(ids):
    padded[row, :len(x)] = torch.from_numpy(x.astype(np.int64))
  key = jax.random.key(config.sample.seed)
  z = np.array(jax.random.truncated_normal(key, -2.0, 2.0, (len(ids), 10)) * 0.88)
  with torch.no_grad():
    _, sentence = official['text_encoder'](padded, lengths)
    images = netg(torch.from_numpy(z), sentence).numpy().transpose(0, 2, 3, 1)
  expected = gan.stage_grid(None, [images])
  assert grid.shape == expected.shape
  difference = np.abs(grid.astype(int) - expected.astype(int))
  assert difference.max() <= 1 and np.mean(difference > 0) < 1e-3
  assert np.std(expected) > 20
