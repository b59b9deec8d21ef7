"""Geometry applied to source images before training, as the official code does.

Two operations shared by the StackGAN, AttnGAN and DF-GAN families:
- the CUB bounding-box crop with a 1.5x margin around the bird;
- torchvision's `Scale(int)` / `Resize(int)`: the shorter side to a size.
"""

from typing import Sequence, TypeVar, Union

import numpy as np
from PIL import Image

ImageLike = TypeVar('ImageLike', Image.Image, np.ndarray)


def cub_bbox_box(
    width: int, height: int, bbox: Sequence[Union[int, float]]
) -> tuple[int, int, int, int]:
  """Returns the (left, top, right, bottom) pixel box of the CUB crop.

  The square of side 1.5 * max(w, h) centred on the bird's box, clipped to
  the image; so a bird near a border gives a non-square crop.

  Args:
    width: image width in pixels.
    height: image height in pixels.
    bbox: (x, y, w, h) of the bird: left, top, width, height in pixels. The
      readers pass integers, as the official code casts the file to int.
  """
  x, y, w, h = bbox
  half_side = int(0.75 * max(w, h))
  # int() truncates like the official code; the numbers are non-negative, so
  # this is the floor.
  center_x = int((2 * x + w) / 2)
  center_y = int((2 * y + h) / 2)
  left = max(0, center_x - half_side)
  top = max(0, center_y - half_side)
  right = min(width, center_x + half_side)
  bottom = min(height, center_y + half_side)
  return left, top, right, bottom


def cub_bbox_crop(
    image: ImageLike, bbox: Sequence[Union[int, float]]
) -> ImageLike:
  """Crops a CUB image around its bird box with a 1.5x margin.

  Args:
    image: a PIL image, or an array of shape [H, W] or [H, W, C].
    bbox: (x, y, w, h) of the bird in pixels.

  Returns:
    The crop, of the same type as `image`.
  """
  if isinstance(image, Image.Image):
    return image.crop(cub_bbox_box(image.width, image.height, bbox))
  height, width = image.shape[:2]
  left, top, right, bottom = cub_bbox_box(width, height, bbox)
  return image[top:bottom, left:right]


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
  """Returns the (width, height) torchvision's Resize(size) produces.

  The shorter side becomes `size`; the longer side becomes
  int(size * long / short), truncated, not rounded (torchvision's Scale and
  Resize with an int both do this). A square image becomes size x size.
  """
  if width <= height:
    return size, int(size * height / width)
  return int(size * width / height), size


def scale_shorter_side(image: Image.Image, size: int) -> Image.Image:
  """Resizes a PIL image so that its shorter side is `size`, keeping aspect.

  Matches torchvision `transforms.Scale(size)` / `Resize(size)` on a PIL image:
  sizes from `shorter_side_size`, PIL bilinear filter, and the image is
  returned unchanged when its shorter side already equals `size`.
  """
  if min(image.size) == size:
    return image
  new_size = shorter_side_size(image.width, image.height, size)
  return image.resize(new_size, Image.Resampling.BILINEAR)
