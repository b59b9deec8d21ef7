"""MS-COCO 2014 with the AttnGAN metadata: images and five captions each.

The AttnGAN split is train2014 for training and val2014 for testing; keys and
their order come from the metadata's filenames.pickle. There is no bounding
box and no class information (unless a class_info.pickle is supplied), so
every image is its own class, as in the official code.
"""

import os
from typing import Optional, Sequence

from t2ijax import errors
from t2ijax.data.sources import attngan_metadata
from t2ijax.data.sources import base
from t2ijax.data.sources import common

NAME = 'COCO'
CAPTIONS_PER_IMAGE = 5
IMAGES_DIR = 'images'
# DF-GAN's newer code keeps the two image sets in their own folders instead
# of one; an image is looked for in IMAGES_DIR first, then in these.
IMAGE_SUBDIRS = ('train2014', 'val2014')

LAYOUT = """\
<manual_dir>/                          (the AttnGAN "data/coco" folder)
  images/<key>.jpg                     train2014 AND val2014 images together
                                       (or in images/train2014/ and val2014/)
  train/filenames.pickle               keys like COCO_train2014_000000000009
  test/filenames.pickle                keys like COCO_val2014_000000000042
  train/class_info.pickle              optional (default: each image a class)
  captions.pickle                      released captions (word ids + vocabulary;
                                       DF-GAN calls it captions_DAMSM.pickle),
                                       or, when there is no captions pickle:
  text/<key>.txt                       raw captions, one per line
"""

PREPARE_HINT = """\
Download the MS-COCO 2014 train2014 and val2014 images and the AttnGAN coco
metadata (captions.pickle, train/ and test/ with filenames.pickle, and the
text archives: unpack the val2014 captions into text/ as well). Put all images
in <manual_dir>/images/ (or keep images/train2014/ and images/val2014/), so
that <manual_dir> looks like the layout above, then run
  python -m t2ijax.data.prepare --source=coco --manual_dir=<manual_dir>
Keep the released captions.pickle: pretrained DAMSM text encoders only work
with its word ids.
"""


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
      standard ones.
  """
  required = [IMAGES_DIR] + [
      attngan_metadata.filenames_path(split) for split in splits
  ]
  missing = common.missing_paths(manual_dir, required)
  missing += attngan_metadata.missing_captions(manual_dir, captions_pickle)
  common.raise_if_missing(NAME, manual_dir, missing, LAYOUT, PREPARE_HINT)


def find_image(manual_dir: str, key: str) -> Optional[str]:
  """The path of a key's image, or None when it is in none of the places."""
  for subdir in ('',) + IMAGE_SUBDIRS:
    path = os.path.join(manual_dir, IMAGES_DIR, subdir, key + '.jpg')
    if os.path.isfile(path):
      return path
  return None


def read_split(
    manual_dir: str,
    split: str,
    captions_per_image: int = CAPTIONS_PER_IMAGE,
    *,
    on_corrupt: str = 'error',
    captions_pickle: Optional[str] = None,
) -> common.SourceSplit:
  """Reads one split of COCO, checking that every file is there and decodes.

  Args:
    manual_dir: the folder laid out as LAYOUT.
    split: 'train' or 'test'.
    captions_per_image: 5 for the released metadata.
    on_corrupt: 'error' or 'skip' (see common.drop_or_reject_corrupt).
    captions_pickle: a captions pickle file name to use instead of
      captions.pickle / captions_DAMSM.pickle.

  Returns:
    The examples in filenames.pickle order; the released vocabulary when
    captions came from a pickle.

  Raises:
    DataLayoutError: a file is missing or malformed; the message names it.
    CorruptImageError: an image does not decode and on_corrupt is 'error'.
    CaptionError: the captions pickle holds an unusable caption.
  """
  common.check_arguments(split, captions_per_image, on_corrupt)
  check_layout(manual_dir, (split,), captions_pickle)
  keys = attngan_metadata.read_keys(manual_dir, split)
  class_ids = attngan_metadata.read_class_ids(manual_dir, split, len(keys))
  image_paths = [find_image(manual_dir, key) for key in keys]
  missing = [
      os.path.join(manual_dir, IMAGES_DIR, key + '.jpg')
      for key, path in zip(keys, image_paths)
      if path is None
  ]
  if missing:
    other_places = ' and '.join(
        f'{IMAGES_DIR}/{subdir}/' for subdir in IMAGE_SUBDIRS
    )
    raise errors.DataLayoutError(
        f'{len(missing)} image file(s) of the {split} split are missing (also '
        f'looked in {other_places}):\n'
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
