"""CUB-200-2011 birds with the AttnGAN metadata: images, bird boxes, captions.

The split (8,855 train / 2,933 test images from disjoint classes) and the key
order come from the metadata's filenames.pickle, so examples line up with the
released captions.pickle and with results reported by the official code. The
bird box is carried with each example; the 1.5x crop (`t2ijax.data.crop`) is
applied when images are loaded.
"""

import os
from typing import Optional, Sequence

from t2ijax import errors
from t2ijax.data.sources import attngan_metadata
from t2ijax.data.sources import base
from t2ijax.data.sources import common

NAME = 'CUB'
CAPTIONS_PER_IMAGE = 10
IMAGES_DIR = os.path.join('CUB_200_2011', 'images')
IMAGES_LIST = os.path.join('CUB_200_2011', 'images.txt')
BOUNDING_BOXES = os.path.join('CUB_200_2011', 'bounding_boxes.txt')

LAYOUT = """\
<manual_dir>/                          (the AttnGAN "data/birds" folder)
  CUB_200_2011/
    images/<class_dir>/<image>.jpg
    images.txt                         "<id> <class_dir>/<image>.jpg" per line
    bounding_boxes.txt                 "<id> <x> <y> <width> <height>" per line
  train/filenames.pickle               keys "<class_dir>/<image>" (no extension)
  train/class_info.pickle              optional: one class id per key
  test/filenames.pickle
  test/class_info.pickle               optional
  captions.pickle                      released captions (word ids + vocabulary;
                                       DF-GAN calls it captions_DAMSM.pickle),
                                       or, when there is no captions pickle:
  text/<class_dir>/<image>.txt         raw captions, one per line
"""

PREPARE_HINT = """\
Download CUB-200-2011 (the CUB_200_2011 folder with images/, images.txt and
bounding_boxes.txt) and the AttnGAN birds metadata (captions.pickle, train/ and
test/ with filenames.pickle and class_info.pickle, text/). Unpack both into
<manual_dir> so that it looks like the layout above, then run
  python -m t2ijax.data.prepare --source=cub --manual_dir=<manual_dir>
Keep the released captions.pickle: pretrained DAMSM text encoders only work
with its word ids.
"""


def _required(splits: Sequence[str]) -> list[str]:
  paths = [IMAGES_DIR, IMAGES_LIST, BOUNDING_BOXES]
  return paths + [attngan_metadata.filenames_path(split) for split in splits]


def check_layout(
    manual_dir: str,
    splits: Sequence[str] = common.SPLITS,
    captions_pickle: Optional[str] = None,
) -> None:
  """Raises DataLayoutError naming every file or folder that is missing.

  Args:
    manual_dir: the folder laid out as LAYOUT.
    splits: the splits whose metadata must be there.
    captions_pickle: a captions pickle file name to require instead of the
      standard ones (e.g. MirrorGAN's 'bird_captions.pickle').
  """
  missing = common.missing_paths(manual_dir, _required(splits))
  missing += attngan_metadata.missing_captions(manual_dir, captions_pickle)
  common.raise_if_missing(NAME, manual_dir, missing, LAYOUT, PREPARE_HINT)


def _read_id_table(path: str, num_values: int) -> dict[str, list[str]]:
  """Reads '<id> <value> ...' lines into id -> values, checking each line."""
  table = {}
  with open(path, encoding='utf-8') as f:
    for line_number, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 1 + num_values:
        raise errors.DataLayoutError(
            f'{path}, line {line_number}: expected an id and {num_values} '
            f'value(s), got {line.strip()!r}. Restore the file from the '
            'CUB-200-2011 download.'
        )
      table[fields[0]] = fields[1:]
  return table


def read_bounding_boxes(
    manual_dir: str,
) -> dict[str, tuple[int, int, int, int]]:
  """Maps image keys to their bird box (x, y, width, height) in pixels.

  The two files are joined through the image id; an image without a box line
  is left out. Values are cast to int as
  the official code does (the file stores whole numbers like '60.0').
  """
  images_path = os.path.join(manual_dir, IMAGES_LIST)
  boxes_path = os.path.join(manual_dir, BOUNDING_BOXES)
  image_paths = _read_id_table(images_path, 1)
  boxes = _read_id_table(boxes_path, 4)
  key_to_box = {}
  for image_id, (relative_path,) in image_paths.items():
    if image_id not in boxes:
      continue  # Reported by read_split if the image is in a split.
    try:
      box = tuple(int(float(value)) for value in boxes[image_id])
    except ValueError:
      raise errors.DataLayoutError(
          f'{boxes_path}: the box of image id {image_id} is not numeric: '
          f'{boxes[image_id]}. Restore the file from the CUB-200-2011 download.'
      ) from None
    key_to_box[os.path.splitext(relative_path)[0]] = box
  return key_to_box


def read_split(
    manual_dir: str,
    split: str,
    captions_per_image: int = CAPTIONS_PER_IMAGE,
    *,
    on_corrupt: str = 'error',
    captions_pickle: Optional[str] = None,
) -> common.SourceSplit:
  """Reads one split of CUB, checking that every file is there and decodes.

  Args:
    manual_dir: the folder laid out as LAYOUT.
    split: 'train' or 'test'.
    captions_per_image: 10 for the released metadata.
    on_corrupt: 'error' or 'skip' (see common.drop_or_reject_corrupt).
    captions_pickle: a captions pickle file name to use instead of
      captions.pickle / captions_DAMSM.pickle.

  Returns:
    The examples in filenames.pickle order, with class ids, bird boxes and
    captions; the released vocabulary when captions came from a pickle.

  Raises:
    DataLayoutError: a file is missing or malformed; the message names it.
    CorruptImageError: an image does not decode and on_corrupt is 'error'.
    CaptionError: the captions pickle holds an unusable caption.
  """
  common.check_arguments(split, captions_per_image, on_corrupt)
  check_layout(manual_dir, (split,), captions_pickle)
  keys = attngan_metadata.read_keys(manual_dir, split)
  class_ids = attngan_metadata.read_class_ids(manual_dir, split, len(keys))
  key_to_box = read_bounding_boxes(manual_dir)
  without_box = [key for key in keys if key not in key_to_box]
  if without_box:
    raise errors.DataLayoutError(
        f'{len(without_box)} image(s) of '
        f'{attngan_metadata.filenames_path(split)} have no bounding box: they '
        f'are not listed in {os.path.join(manual_dir, IMAGES_LIST)}, or their '
        f'id has no line in {os.path.join(manual_dir, BOUNDING_BOXES)}:\n'
        f'{common.bullet_list(without_box)}\n'
        'The metadata and CUB-200-2011 do not match; use the original files.'
    )
  image_paths = [
      os.path.join(manual_dir, IMAGES_DIR, key + '.jpg') for key in keys
  ]
  missing = [path for path in image_paths if not os.path.isfile(path)]
  if missing:
    raise errors.DataLayoutError(
        f'{len(missing)} image file(s) of the {split} split are missing:\n'
        f'{common.bullet_list(missing)}\n'
        f'{common.layout_help(LAYOUT, PREPARE_HINT)}'
    )
  captions, vocab = attngan_metadata.read_captions(
      manual_dir, split, keys, captions_per_image, captions_pickle
  )
  examples = [
      base.RawExample(
          key=key,
          captions=image_captions,
          class_id=class_id,
          image_path=image_path,
          bbox=key_to_box[key],
      )
      for key, image_captions, class_id, image_path in zip(
          keys, captions, class_ids, image_paths
      )
  ]
  examples, num_skipped = common.drop_or_reject_corrupt(examples, on_corrupt)
  return common.SourceSplit(
      examples=examples,
      captions_per_image=captions_per_image,
      vocab=vocab,
      num_skipped=num_skipped,
  )
