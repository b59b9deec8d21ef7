"""The metadata files AttnGAN-family code keeps beside the CUB and COCO images.

Both data sets come with the same files (the released "birds" and "coco"
metadata archives):
  <split>/filenames.pickle   the split's keys in order (a Python-2 pickle)
  <split>/class_info.pickle  optional, one class id per key
  captions.pickle            released captions as word ids plus the vocabulary
                             (DF-GAN's newer code: captions_DAMSM.pickle)
  text/<key>.txt             raw captions, one per line
Captions come from the pickle when there is one, because pretrained text
encoders are tied to its word ids; otherwise from the text files.
"""

import os
import pickle
from typing import Optional, Sequence

from absl import logging
import numpy as np

from t2ijax import errors
from t2ijax.data import text
from t2ijax.data.sources import common

# Searched in this order when no captions pickle is named explicitly.
CAPTIONS_PICKLE_NAMES = ('captions.pickle', 'captions_DAMSM.pickle')
TEXT_DIR = 'text'


def filenames_path(split: str) -> str:
  return os.path.join(split, 'filenames.pickle')


def class_info_path(split: str) -> str:
  return os.path.join(split, 'class_info.pickle')


def load_python2_pickle(path: str):
  """Loads a pickle written by Python 2, as the released metadata is.

  latin1 maps every byte to one character, so Python-2 str values load as
  str and numpy arrays inside load intact.
  """
  try:
    with open(path, 'rb') as f:
      return pickle.load(f, encoding='latin1')
  # A damaged or foreign file fails in many ways; all mean "not readable".
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise errors.DataLayoutError(
        f'{path} cannot be unpickled ({type(e).__name__}: {e}). It is damaged '
        'or not the released file; download the metadata again.'
    ) from None


def read_keys(manual_dir: str, split: str) -> list[str]:
  """The keys ('<class_dir>/<image>' or '<image>', no extension) of a split."""
  path = os.path.join(manual_dir, filenames_path(split))
  keys = load_python2_pickle(path)
  if not isinstance(keys, (list, tuple)) or not all(
      isinstance(k, str) for k in keys
  ):
    raise errors.DataLayoutError(
        f'{path} must hold a list of image keys (strings), got '
        f'{type(keys).__name__}. Download the metadata again.'
    )
  if not keys:
    raise errors.DataLayoutError(
        f'{path} lists no images; download the metadata again.'
    )
  return list(keys)


def read_class_ids(manual_dir: str, split: str, num_keys: int) -> list[int]:
  """One class id per key: from class_info.pickle, else 0..num_keys-1.

  Without class information every image is its own class, as in the official
  code; a "mismatched" caption is then any other image's caption.
  """
  path = os.path.join(manual_dir, class_info_path(split))
  if not os.path.exists(path):
    return list(range(num_keys))
  class_ids = load_python2_pickle(path)
  try:
    class_ids = [
        int(class_id) for class_id in np.asarray(class_ids).reshape(-1)
    ]
  except (TypeError, ValueError):
    raise errors.DataLayoutError(
        f'{path} must hold one integer class id per image. Download the '
        'metadata again, or delete it to treat every image as its own class.'
    ) from None
  if len(class_ids) != num_keys:
    raise errors.DataLayoutError(
        f'{path} holds {len(class_ids)} class ids but '
        f'{filenames_path(split)} lists {num_keys} images; both must come from '
        'the same metadata download.'
    )
  return class_ids


def find_captions_pickle(
    manual_dir: str, name: Optional[str] = None
) -> Optional[str]:
  """The path of the captions pickle to use, or None to read text/ instead.

  Args:
    manual_dir: the data directory.
    name: a file name inside manual_dir (e.g. MirrorGAN's
      'bird_captions.pickle'); when given it must exist. When None, the first
      of CAPTIONS_PICKLE_NAMES that exists.
  """
  names = (name,) if name else CAPTIONS_PICKLE_NAMES
  for candidate in names:
    path = os.path.join(manual_dir, candidate)
    if os.path.exists(path):
      return path
  return None


def missing_captions(
    manual_dir: str, captions_pickle: Optional[str]
) -> list[str]:
  """What is missing for captions: [] when a pickle or text/ is there."""
  if captions_pickle:
    return common.missing_paths(manual_dir, [captions_pickle])
  has_pickle = find_captions_pickle(manual_dir) is not None
  if has_pickle or os.path.isdir(os.path.join(manual_dir, TEXT_DIR)):
    return []
  first = os.path.join(manual_dir, CAPTIONS_PICKLE_NAMES[0])
  others = ', '.join(CAPTIONS_PICKLE_NAMES[1:])
  return [f'{first} (or {others}, or a {TEXT_DIR}/ folder of caption files)']


def read_captions(
    manual_dir: str,
    split: str,
    keys: Sequence[str],
    captions_per_image: int,
    captions_pickle: Optional[str] = None,
) -> tuple[list[tuple[str, ...]], Optional[text.Vocab]]:
  """Each key's captions as text, and the released vocabulary if there is one.

  Args:
    manual_dir: the data directory.
    split: 'train' or 'test'.
    keys: the split's keys, in filenames.pickle order.
    captions_per_image: captions per image (CUB 10, COCO 5).
    captions_pickle: a captions pickle file name to use instead of the
      standard names.

  Returns:
    (for each key, its captions; the vocabulary of the pickle, or None when
    the captions came from text files).
  """
  path = find_captions_pickle(manual_dir, captions_pickle)
  if path:
    return captions_from_pickle(path, split, keys, captions_per_image)
  return captions_from_text_files(manual_dir, keys, captions_per_image), None


def captions_from_pickle(
    path: str, split: str, keys: Sequence[str], captions_per_image: int
) -> tuple[list[tuple[str, ...]], text.Vocab]:
  """Turns the pickle's word ids back into text, one space between words.

  Every vocabulary word is a single token of text.tokenize, so tokenizing the
  text again gives back exactly the released ids; this is checked for each
  word used, as a guard against a foreign pickle.
  """
  train_ids, test_ids, vocab = text.read_captions_pickle(path)
  split_ids = train_ids if split == 'train' else test_ids
  expected = len(keys) * captions_per_image
  per_image = len(split_ids) / len(keys)
  # Fewer captions than images need, or a whole other number per image, means
  # a wrong captions_per_image or mismatched files. A few extra captions at the
  # end are what the official code tolerates (it indexes i * cpi + j and never
  # reaches them), so they are ignored the same way.
  if len(split_ids) < expected or (
      len(split_ids) > expected and per_image.is_integer()
  ):
    raise errors.DataLayoutError(
        f'{path} holds {len(split_ids)} {split} captions, but '
        f'{len(keys)} images x captions_per_image={captions_per_image} = '
        f'{expected} were expected (that is '
        f'{per_image:g} per image). Set captions_per_image to match the file '
        '(10 for CUB, 5 for COCO), and check that the pickle and '
        f'{filenames_path(split)} come from the same metadata download.'
    )
  if len(split_ids) > expected:
    logging.warning(
        '%s holds %d %s captions, %d more than %d images x %d; the extra ones '
        'at the end are not used, as in the official code.',
        path,
        len(split_ids),
        split,
        len(split_ids) - expected,
        len(keys),
        captions_per_image,
    )
  words_checked = set()
  captions = []
  for image_index, key in enumerate(keys):
    image_captions = []
    for j in range(captions_per_image):
      ids = split_ids[image_index * captions_per_image + j]
      if ids.size == 0 or (ids == text.PAD_ID).any():
        raise errors.CaptionError(
            f'{path}: {split} caption {j} of {key!r} is empty or contains the '
            f'padding id {text.PAD_ID}. The file is damaged; download it again.'
        )
      for word_id in set(ids.tolist()) - words_checked:
        word = vocab.itos[word_id]
        if text.tokenize(word) != [word]:
          raise errors.CaptionError(
              f'{path}: vocabulary word {word!r} (id {word_id}) is not a '
              'single token of the AttnGAN tokenizer, so its captions cannot '
              'be written as text faithfully. This is not a released captions '
              'pickle; use the released one or the text/ files.'
          )
        words_checked.add(word_id)
      image_captions.append(vocab.decode(ids))
    captions.append(tuple(image_captions))
  return captions, vocab


def usable_caption_lines(path: str) -> list[str]:
  """The lines of a caption file that the official preprocessing keeps.

  Empty lines and lines without a single word are skipped. Bytes that are not
  UTF-8 become U+FFFD, which the tokenizer treats as a separator.
  """
  with open(path, encoding='utf-8', errors='replace') as f:
    lines = f.read().split('\n')
  return [line.strip() for line in lines if text.tokenize(line)]


def captions_from_text_files(
    manual_dir: str, keys: Sequence[str], captions_per_image: int
) -> list[tuple[str, ...]]:
  """The first captions_per_image usable lines of text/<key>.txt per key.

  The official preprocessing prints an error for a file with too few lines
  and carries on, which later breaks caption indexing; here such files are
  reported together, before anything is written.
  """
  paths = [os.path.join(manual_dir, TEXT_DIR, key + '.txt') for key in keys]
  missing = [path for path in paths if not os.path.isfile(path)]
  if missing:
    raise errors.DataLayoutError(
        f'{len(missing)} caption file(s) are missing (captions are read from '
        f'{TEXT_DIR}/ because no captions pickle was found):\n'
        f'{common.bullet_list(missing)}\n'
        f'Unpack the complete {TEXT_DIR}/ folder of the metadata, or put the '
        f'released {CAPTIONS_PICKLE_NAMES[0]} in {manual_dir}.'
    )
  captions = []
  too_short = []
  for path in paths:
    lines = usable_caption_lines(path)
    if len(lines) < captions_per_image:
      too_short.append(f'{path} (has {len(lines)})')
    captions.append(tuple(lines[:captions_per_image]))
  if too_short:
    raise errors.DataLayoutError(
        f'{len(too_short)} caption file(s) have fewer than '
        f'captions_per_image={captions_per_image} usable lines (non-empty, '
        f'with at least one word):\n{common.bullet_list(too_short)}\n'
        'Add captions to these files, lower captions_per_image (every image '
        f'needs that many), or use the released {CAPTIONS_PICKLE_NAMES[0]}.'
    )
  return captions
