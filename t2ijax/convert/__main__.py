r"""Converts official PyTorch checkpoints into files t2ijax runs directly.

  python -m t2ijax.convert --kind=KIND --src=FILE.pth --dst=DIR [...]

Kinds (see t2ijax/convert/kinds.py for the stored format):
  fid_inception           pytorch-fid's pt_inception-2015-12-05-6726825d.pth
  torchvision_inception   inception_v3_google-*.pth [--num_classes=N|none]
  cub_inception           StackGAN-inception-model's TF checkpoint, the CUB /
                          flowers Inception Score classifier:
                          --src=inception_finetuned_models/birds_valid299/
                          model.ckpt-5000 (the prefix) [--num_classes=50|20,
                          default: read from the checkpoint]; use DIR as
                          --config.eval.is_classifier=DIR
  damsm_text              text_encoder*.pth, with --captions=captions.pickle
  damsm_image             image_encoder*.pth [--captions=captions.pickle]
  damsm                   a DAMSM run directory, usable as a GAN's
                          --config.damsm.workdir: --text_encoder=...
                          [--image_encoder=...] --captions=...
                          [--config=configs/damsm.py:cub]
  attngan_netG            an AttnGAN / DM-GAN netG as a runnable GAN workdir
  dmgan_netG              (with DIR/damsm): --src=netG.pth
                          --text_encoder=text_encoder*.pth
                          --captions=captions.pickle
                          [--image_encoder=image_encoder*.pth: for eval/train]
                          --config=configs/dmgan.py:cub (or :coco, or
                          configs/attngan.py:...) [--config.data.manual_dir=...]
  dfgan_netG              a DF-GAN state_epoch_*.pth (2022 code; its netD and
                          netC are kept for fine-tuning) or a bare netG, as a
                          runnable workdir: the same flags, with
                          --config=configs/dfgan.py:cub (or :coco)

Example (DM-GAN, CUB):

  python -m t2ijax.convert --kind=dmgan_netG --src=models/bird_DMGAN.pth \
      --text_encoder=DAMSMencoders/bird/text_encoder200.pth \
      --image_encoder=DAMSMencoders/bird/image_encoder200.pth \
      --captions=data/birds/captions.pickle --config=configs/dmgan.py:cub \
      --config.data.manual_dir=data/birds --dst=runs/dmgan_cub_official
  python -m t2ijax.main --config=configs/dmgan.py:cub \
      --workdir=runs/dmgan_cub_official --mode=sample \
      --config.sample.captions='this bird is red with a short beak'
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from t2ijax import config_base
from t2ijax import errors
from t2ijax.convert import kinds
from t2ijax.convert import torch_dfgan
from t2ijax.convert import torch_inception
from t2ijax.convert import workdir

WORKDIR_KINDS = ('damsm', 'attngan_netG', 'dmgan_netG', 'dfgan_netG')

FLAGS = flags.FLAGS
flags.DEFINE_enum('kind', None, [
    'fid_inception', 'torchvision_inception', 'cub_inception', 'damsm_text',
    'damsm_image', 'damsm', 'attngan_netG', 'dmgan_netG', 'dfgan_netG'],
    'What --src is.')
flags.DEFINE_string('src', None, 'The PyTorch checkpoint (.pth) to convert; '
                    'for cub_inception the TF checkpoint prefix '
                    '(.../model.ckpt-5000).')
flags.DEFINE_string('dst', None, 'Output directory (created; must be empty).')
flags.DEFINE_string('captions', None,
                    'The data set\'s captions.pickle: the vocabulary of the '
                    'DAMSM text encoder.')
flags.DEFINE_string('text_encoder', None,
                    'DAMSM text_encoder*.pth (netG kinds, damsm).')
flags.DEFINE_string('image_encoder', None,
                    'DAMSM image_encoder*.pth (netG kinds, damsm); needed for '
                    '--mode=eval and train of the written workdir.')
flags.DEFINE_string('num_classes', 'infer',
                    'torchvision_inception: classifier size, "infer" or '
                    '"none"; cub_inception: classes without the background '
                    '(50 CUB, 20 flowers) or "infer".')
flags.DEFINE_string('damsm_config', None,
                    'netG kinds: the DAMSM config for DST/damsm, PATH[:ARG]; '
                    'default: damsm.py beside --config, variant coco for COCO '
                    'data and cub otherwise.')
config_flags.DEFINE_config_file(
    'config', None, 'netG kinds: the GAN config (configs/dmgan.py:cub, ...); '
    'damsm: the DAMSM config (default configs/damsm.py:cub).',
    lock_config=True)
flags.mark_flags_as_required(['kind', 'dst'])


def _require(**values) -> None:
  missing = [f'--{name}' for name, value in values.items() if not value]
  if missing:
    raise errors.ConfigError(
        f'--kind={FLAGS.kind} needs {", ".join(missing)}; see python -m '
        't2ijax.convert --help.')


def _sources(**paths) -> dict:
  return {name: kinds.file_digest(path) for name, path in paths.items() if path}


def _num_classes(value: str):
  if value in ('infer', 'none'):
    return None if value == 'none' else value
  if not value.isdigit():
    raise errors.ConfigError(
        f'--num_classes={value!r}: give a number, "infer" or "none".')
  return int(value)


def _repo_configs_dir() -> str:
  return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), 'configs')


def _load_config(spec: str):
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise errors.ConfigError(f'No config file at {path}; pass PATH[:ARG] of '
                             'a configs/*.py file.')
  return config_base.load_config_file(path, arg or None)


def _damsm_config(gan_config):
  if FLAGS.damsm_config:
    return _load_config(FLAGS.damsm_config)
  gan_path = config_flags.get_config_filename(FLAGS['config'])
  variant = 'coco' if gan_config.data.source == 'coco' else 'cub'
  return _load_config(os.path.join(os.path.dirname(os.path.abspath(gan_path)),
                                   f'damsm.py:{variant}'))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  kind, dst = FLAGS.kind, os.path.expanduser(FLAGS.dst)
  try:
    if kind not in WORKDIR_KINDS:
      _require(src=FLAGS.src)
      path = kinds.convert_file(kind, FLAGS.src, dst, FLAGS.captions,
                                _num_classes(FLAGS.num_classes.lower()))
      print(f'{kind}: wrote {path}; read it with '
            f't2ijax.convert.kinds.load({dst!r})')
      return
    _require(text_encoder=FLAGS.text_encoder, captions=FLAGS.captions)
    if kind != 'damsm':
      _require(src=FLAGS.src, config=FLAGS.config)
    load = torch_inception.load_state_dict
    text_sd = load(FLAGS.text_encoder)
    image_sd = load(FLAGS.image_encoder) if FLAGS.image_encoder else None
    vocab = kinds.read_vocab(FLAGS.captions)
    sources = _sources(text_encoder=FLAGS.text_encoder,
                       image_encoder=FLAGS.image_encoder,
                       captions=FLAGS.captions, netG=FLAGS.src)
    if kind == 'damsm':
      config = FLAGS.config or _load_config(
          os.path.join(_repo_configs_dir(), 'damsm.py:cub'))
      workdir.write_damsm_workdir(dst, config, text_sd, image_sd, vocab,
                                  sources)
      print(f'damsm: wrote the DAMSM workdir {dst}; use it with '
            f'--config.damsm.workdir={dst}')
      return
    config = FLAGS.config
    netg = (torch_dfgan.load_checkpoint(FLAGS.src) if kind == 'dfgan_netG'
            else load(FLAGS.src))
    workdir.write_gan_workdir(dst, kind, config, _damsm_config(config), netg,
                              text_sd, image_sd, vocab, sources)
    config_arg = FLAGS['config'].serialize().split('=', 1)[1]
    print(f'{kind}: wrote the workdir {dst} (and {dst}/damsm). Sample with\n'
          f'  python -m t2ijax.main --config={config_arg} --workdir={dst} '
          "--mode=sample --config.sample.captions='...'")
  except errors.T2IError as e:
    print(f'error ({type(e).__name__}): {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
