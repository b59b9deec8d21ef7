"""Source for the built-in procedural shapes data set (no files on disk).

A thin adapter so the builder can treat shapes like the other sources; the
data set itself lives in `t2ijax.data.shapes`.
"""

from typing import Iterator

from t2ijax.data import shapes
from t2ijax.data.sources.base import RawExample

NUM_CLASSES = shapes.NUM_CLASSES
ATTRIBUTE_NAMES = shapes.ATTRIBUTE_NAMES


def read_split(split: str, num_examples: int, image_size: int,
               captions_per_image: int = 10,
               seed: int = 0) -> Iterator[RawExample]:
  """Yields the split's examples; each is generated, deterministically."""
  return shapes.generate(split, num_examples, image_size,
                         captions_per_image=captions_per_image, seed=seed)
