"""What every file-backed source shares: its result, errors and image checks.

Each source module (cub, coco, folder) reads its files into `RawExample`s and
returns a `SourceSplit`. Errors list every offending path at once, so a user
fixes a data directory in one pass rather than one failure per run.
"""

import concurrent.futures
import dataclasses
import os
from typing import Optional, Sequence

from absl import logging
from PIL import Image

from t2ijax import errors
from t2ijax.data import text
from t2ijax.data.sources import base

SPLITS = ('train', 'test')
ON_CORRUPT_CHOICES = ('error', 'skip')
# The config switch a user flips to drop undecodable images.
ON_CORRUPT_SWITCH = 'data.on_corrupt_image'
# Messages list this many paths, then a count of the rest, so that one broken
# directory does not flood the terminal.
MAX_LISTED = 10


@dataclasses.dataclass(frozen=True)
class SourceSplit:
  """One split of a data source, read from disk and checked.

  Attributes:
    examples: the examples in the source's order (file order of the split).
    captions_per_image: how many captions each example holds.
    vocab: the vocabulary released with the data (AttnGAN captions.pickle),
      which pretrained text encoders need; None when the data has none.
    num_skipped: examples dropped because their image did not decode (only
      with on_corrupt='skip').
  """

  examples: list[base.RawExample]
  captions_per_image: int
  vocab: Optional[text.Vocab] = None
  num_skipped: int = 0


def check_arguments(
    split: str, captions_per_image: Optional[int], on_corrupt: str
) -> None:
  """Rejects a split no source has and config values no source accepts.

  Raises:
    ValueError: split is not 'train' or 'test' (a caller's mistake).
    ConfigError: captions_per_image or on_corrupt is invalid (both come from
      the data config).
  """
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}.')
  if captions_per_image is not None and captions_per_image < 1:
    raise errors.ConfigError(
        'data.captions_per_image must be at least 1, got '
        f'{captions_per_image}.'
    )
  if on_corrupt not in ON_CORRUPT_CHOICES:
    raise errors.ConfigError(
        f'{ON_CORRUPT_SWITCH} must be one of {ON_CORRUPT_CHOICES}, got '
        f'{on_corrupt!r}.'
    )


def bullet_list(lines: Sequence[str]) -> str:
  """Formats lines as an indented list, at most MAX_LISTED of them."""
  shown = [f'  - {line}' for line in lines[:MAX_LISTED]]
  if len(lines) > MAX_LISTED:
    shown.append(f'  ... and {len(lines) - MAX_LISTED} more')
  return '\n'.join(shown)


def layout_help(layout: str, prepare_hint: str) -> str:
  """The part of a layout error that shows the expected tree and the fix."""
  return (
      f'Expected layout:\n{layout.rstrip()}\n'
      f'How to prepare it:\n{prepare_hint.rstrip()}'
  )


def missing_paths(manual_dir: str, relative_paths: Sequence[str]) -> list[str]:
  """Returns the paths under manual_dir that do not exist, in order."""
  return [
      os.path.join(manual_dir, path)
      for path in relative_paths
      if not os.path.exists(os.path.join(manual_dir, path))
  ]


def raise_if_missing(
    source: str,
    manual_dir: str,
    missing: Sequence[str],
    layout: str,
    prepare_hint: str,
) -> None:
  """Raises a DataLayoutError naming every missing path, if there are any."""
  if not missing:
    return
  raise errors.DataLayoutError(
      f'The {source} data in {manual_dir!r} is incomplete; missing:\n'
      f'{bullet_list(missing)}\n{layout_help(layout, prepare_hint)}'
  )


def decode_problem(path: str) -> Optional[str]:
  """Returns why the image at path does not decode, or None when it does.

  Finds files that are not images and files cut short. libjpeg, like every
  JPEG reader, decodes damaged data inside a complete file without complaint,
  so such files pass here and in training alike.
  """
  try:
    with Image.open(path) as image:
      # A JPEG decoded at 1/8 scale still reads its whole entropy-coded
      # stream, so a truncated file is found at a fraction of the cost.
      image.draft(image.mode, (1, 1))
      image.load()
  except Image.UnidentifiedImageError:
    # Its message only repeats the path, which the caller prints anyway.
    return 'not in any image format Pillow reads'
  # Pillow signals a broken file with many exception types (OSError,
  # SyntaxError, ValueError, struct.error, DecompressionBombError, ...); any
  # of them means the image cannot be used.
  except Exception as e:  # pylint: disable=broad-exception-caught
    return f'{type(e).__name__}: {e}'
  return None


def drop_or_reject_corrupt(
    examples: Sequence[base.RawExample], on_corrupt: str
) -> tuple[list[base.RawExample], int]:
  """Decodes every example's image; handles failures by the on_corrupt policy.

  Args:
    examples: examples whose `image_path` exists.
    on_corrupt: 'error' raises CorruptImageError naming every bad file; 'skip'
      drops those examples, logging a warning for each.

  Returns:
    (the examples whose image decodes, in order; how many were dropped).
  """
  paths = [example.image_path for example in examples]
  # Decoding releases the GIL, so threads check a large data set in parallel.
  with concurrent.futures.ThreadPoolExecutor() as pool:
    problems = list(pool.map(decode_problem, paths))
  corrupt = [
      f'{path} ({problem})' for path, problem in zip(paths, problems) if problem
  ]
  if corrupt and on_corrupt == 'error':
    raise errors.CorruptImageError(
        f'{len(corrupt)} image file(s) cannot be decoded:\n'
        f'{bullet_list(corrupt)}\n'
        'Replace or delete them, or set '
        f'{ON_CORRUPT_SWITCH}=skip to leave such '
        'images out (each is logged and counted).'
    )
  for description in corrupt:
    logging.warning('Skipping an image that cannot be decoded: %s', description)
  kept = [
      example for example, problem in zip(examples, problems) if not problem
  ]
  return kept, len(corrupt)
