"""Image batches for FID statistics: a folder of image files, or a data split.

Folders are read as pytorch-fid reads them (files with its extensions, sorted
by path, decoded with PIL `convert('RGB')`), except that subfolders are
searched too: DM-GAN writes CUB samples under per-class folders. When all
images share one size they are yielded as uint8 and resized on the device;
when sizes differ (real photos), each is resized to 299x299 on the host with
the same bilinear taps (torch `align_corners=False`, no antialiasing), which
is what pytorch-fid does to such a folder at batch size 1.

A prepared data split (t2ijax.data.prepare) yields the input pipeline's real
images at the largest configured size, as training and evaluation see them
(the official resize-and-crop, and random flips when data.random_flip).
"""

import os
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from t2ijax.encoders import inception
from t2ijax.errors import CorruptImageError
from t2ijax.errors import DataLayoutError

# pytorch-fid's IMAGE_EXTENSIONS.
IMAGE_EXTENSIONS = ('bmp', 'jpg', 'jpeg', 'pgm', 'png', 'ppm', 'tif', 'tiff',
                    'webp')


def list_images(directory: str) -> list[str]:
  """Image files under `directory` (recursively), sorted by path."""
  directory = os.path.expanduser(directory)
  if not os.path.isdir(directory):
    raise DataLayoutError(f'{directory!r} is not a directory of images.')
  files = []
  for root, _, names in os.walk(directory):
    files += [os.path.join(root, n) for n in names
              if n.rsplit('.', 1)[-1].lower() in IMAGE_EXTENSIONS]
  if not files:
    raise DataLayoutError(
        f'no images ({", ".join(IMAGE_EXTENSIONS)}) under {directory!r}.')
  return sorted(files)


def _bilinear_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  # The taps of encoders.inception's torch-exact resize, applied in numpy.
  low, high, w_low, w_high = inception._bilinear_taps(  # pylint: disable=protected-access
      x.shape[axis], size, align_corners=False)
  shape = [1] * x.ndim
  shape[axis] = size
  return (np.take(x, low, axis=axis) * w_low.reshape(shape)
          + np.take(x, high, axis=axis) * w_high.reshape(shape))


def resize_to_inception(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3) -> float32 (299, 299, 3) in [0, 1], as fid_preprocess."""
  x = image.astype(np.float32) / np.float32(255)
  size = inception.FID_IMAGE_SIZE
  if x.shape[0] != size:
    x = _bilinear_axis(x, 0, size)
  if x.shape[1] != size:
    x = _bilinear_axis(x, 1, size)
  return x.astype(np.float32)


def _read(path: str) -> np.ndarray:
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert('RGB'))
  except (OSError, ValueError) as error:
    raise CorruptImageError(
        f'cannot decode {path!r} ({error}); remove or replace the file.'
    ) from error


def folder_batches(directory: str, batch_size: int) -> Iterator[np.ndarray]:
  """(B, H, W, 3) batches of every image under `directory`, in sorted order."""
  files = list_images(directory)
  sizes = set()
  for path in files:
    try:
      with Image.open(path) as img:  # Reads the header only.
        sizes.add(img.size)
    except (OSError, ValueError) as error:
      raise CorruptImageError(
          f'cannot open {path!r} ({error}); remove or replace the file.'
      ) from error
  same_size = len(sizes) == 1
  for start in range(0, len(files), batch_size):
    images = [_read(p) for p in files[start:start + batch_size]]
    if not same_size:
      images = [resize_to_inception(x) for x in images]
    yield np.stack(images)


def split_batches(config, split: str, batch_size: int,
                  num_images: Optional[int] = None) -> Iterator[np.ndarray]:
  """uint8 batches of the real images of a prepared split, one pass.

  Args:
    config: a method config (its `data` and `seed` are used).
    split: e.g. 'test'.
    batch_size: images per batch.
    num_images: stop after this many (None: the whole split once).
  """
  # The data stack (tf.data, tfds) loads only when a split is asked for.
  from t2ijax.data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  from t2ijax.trainers import loop  # pylint: disable=g-import-not-at-top
  prepared = prepare_lib.prepare(config.data)
  loader = loop.make_loader(config, prepared, split, shuffle=False)
  total = loader.size if num_images is None else num_images
  if total <= 0:
    raise DataLayoutError(f'split {split!r} of {prepared.name} has no images.')
  steps = -(-total // batch_size)
  key = f'image{max(config.data.image_sizes)}'
  # Whole batches only (the pipeline drops remainders); the last is trimmed.
  batches = loop.data_iterator(config, loader, batch_size, 0, steps)
  left = total
  for batch in batches:
    images = batch[key][:left]
    left -= len(images)
    yield images
    if left <= 0:
      break
