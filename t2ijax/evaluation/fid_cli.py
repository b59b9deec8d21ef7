r"""FID from the command line (run as `python -m t2ijax.evaluation.fid`).

FID between two sources, each a folder of images or a pytorch-fid `.npz`:

  python -m t2ijax.evaluation.fid GENERATED_DIR REFERENCE.npz \
      --inception=pt_inception-2015-12-05-6726825d.pth

Statistics of a folder, or of a prepared data split, saved as `.npz`:

  python -m t2ijax.evaluation.fid --save_stats REAL_DIR real.npz --inception=W
  python -m t2ijax.evaluation.fid --save_stats cub_test.npz --inception=W \
      --config=configs/dmgan.py:cub --config.data.manual_dir=DATA/birds \
      --split=test

Convert the PyTorch weights once, so later runs need no torch:

  python -m t2ijax.evaluation.fid --inception=W.pth --convert_inception=W.msgpack

The weights are pytorch-fid's pt_inception-2015-12-05-6726825d.pth, from the
`fid_weights` release of github.com/mseitzer/pytorch-fid. Results are printed
as one JSON object.
"""

import dataclasses
import json
import sys
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging

from t2ijax import errors
from t2ijax.evaluation import features
from t2ijax.evaluation import fid
from t2ijax.evaluation import image_sources


@dataclasses.dataclass
class Options:
  """The command line's flags (see `_define_flags`)."""
  inception: str = ''
  save_stats: bool = False
  convert_inception: str = ''
  batch_size: int = features.DEFAULT_BATCH_SIZE
  split: str = 'test'
  num_images: int = -1
  config: Optional[Any] = None  # A method ConfigDict (for its data).


def _define_flags() -> None:
  # Defined only when run as a program: importing this module (tests) must not
  # add flags that clash with t2ijax.main's --config.
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('inception', '',
                      f'{features.WEIGHTS_FILE} or a converted .msgpack.')
  flags.DEFINE_bool('save_stats', False,
                    'Write the statistics of SOURCE to OUT.npz instead of '
                    'computing a distance.')
  flags.DEFINE_string('convert_inception', '',
                      'Write the --inception weights here as .msgpack, exit.')
  flags.DEFINE_integer('batch_size', features.DEFAULT_BATCH_SIZE,
                       'Images per sharded Inception call.')
  flags.DEFINE_string('split', 'test', 'Data split, with --config.')
  flags.DEFINE_integer('num_images', -1,
                       'With --config: images of the split (-1: all, once).')
  config_flags.DEFINE_config_file(
      'config', None, 'A configs/<method>.py[:variant] whose data to use.',
      lock_config=True)


def _statistics(batches, extractor) -> dict:
  mu, sigma, count = fid.statistics_of_batches(
      out['pool3'] for out in extractor.iterate(batches))
  return {'mu': mu, 'sigma': sigma, 'count': count}


def _stats_of(source: str, extractor_fn) -> dict:
  """Statistics of a path: a .npz file as stored, a folder computed."""
  if source.endswith('.npz'):
    mu, sigma = fid.load_stats(source)
    return {'mu': mu, 'sigma': sigma, 'count': None}
  extractor = extractor_fn()
  return _statistics(
      image_sources.folder_batches(source, extractor.batch_size), extractor)


def run_command(args: list[str], options: Options) -> dict:
  """The CLI's work for the positional `args`; returns what it prints."""
  cache = {}

  def extractor_fn():
    if 'extractor' not in cache:
      cache['extractor'] = features.FidInception.from_file(
          options.inception, batch_size=options.batch_size)
    return cache['extractor']

  if options.convert_inception:
    _, variables = features.load_fid_inception(options.inception)
    return {'saved': features.save_inception_variables(
        options.convert_inception, variables)}
  if options.save_stats:
    if options.config is not None:
      if len(args) != 1:
        raise errors.ConfigError(
            'with --config, --save_stats takes one argument: OUT.npz.')
      extractor = extractor_fn()
      num = options.num_images if options.num_images > 0 else None
      stats = _statistics(image_sources.split_batches(
          options.config, options.split, extractor.batch_size, num), extractor)
    else:
      if len(args) != 2:
        raise errors.ConfigError(
            '--save_stats takes SOURCE_DIR OUT.npz (or OUT.npz with --config).')
      stats = _stats_of(args[0], extractor_fn)
    path = fid.save_stats(args[-1], stats['mu'], stats['sigma'])
    return {'saved': path, 'num_images': stats['count']}
  if len(args) != 2:
    raise errors.ConfigError(
        'give two sources (folders or .npz files), or --save_stats; see '
        'python -m t2ijax.evaluation.fid --helpfull.')
  first, second = (_stats_of(a, extractor_fn) for a in args)
  distance = fid.frechet_distance(first['mu'], first['sigma'],
                                  second['mu'], second['sigma'])
  return {'fid': distance, 'num_images': [first['count'], second['count']]}


def main(argv):
  logging.set_verbosity(logging.INFO)
  flag_values = flags.FLAGS
  options = Options(**{f.name: flag_values[f.name].value
                       for f in dataclasses.fields(Options)})
  try:
    result = run_command(list(argv[1:]), options)
  except (errors.T2IError, ValueError) as e:  # ValueError: FID's sqrtm.
    print(f'error ({type(e).__name__}): {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(result))


def run():
  _define_flags()
  # absl prints __main__'s docstring for --help; the usage is documented here.
  sys.modules['__main__'].__doc__ = __doc__
  app.run(main)


if __name__ == '__main__':
  run()
