"""The record every raw data source yields before it is written as a tfds data set.

A source module (cub, coco, folder, shapes) turns files on disk, or a procedural
generator, into `RawExample`s; `t2ijax.data.builder` writes them once as a tfds
data set and the input pipeline reads that back with random access.
"""

import dataclasses
from typing import Optional, Sequence


@dataclasses.dataclass(frozen=True)
class RawExample:
  key: str                        # unique within the split, e.g. '001.Black_footed_Albatross/..._0046_18'
  captions: Sequence[str]         # exactly captions_per_image non-empty strings
  class_id: int                   # used to pick mismatched captions from another class
  image_path: Optional[str] = None    # an encoded image file on disk, or
  image_bytes: Optional[bytes] = None  # the encoded (PNG/JPEG) bytes themselves
  # CUB bounding box (x, y, w, h) in pixels; the 1.5x crop is applied when loading.
  bbox: Optional[Sequence[float]] = None
  # Integer attribute labels (shapes data set only), in the order of the source's
  # ATTRIBUTE_NAMES; used to judge generated images with an attribute classifier.
  attributes: Optional[Sequence[int]] = None
