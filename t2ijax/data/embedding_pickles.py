"""The released precomputed caption embeddings of the StackGAN family (char-CNN-RNN).

Layout (reference/stackgan_dfgan_family.md §1.3), per split folder:
  <dir>/<split>/char-CNN-RNN-embeddings.pickle   float (N, captions, 1024)
  <dir>/<split>/filenames.pickle                 N keys '<class_dir>/<image>'
  <dir>/<split>/class_info.pickle                optional: N class ids
Python-2 pickles, read with encoding='latin1'. Other embedding files of the
same layout (char-CNN-GRU-embeddings.pickle, skip-thought-embeddings.pickle)
are read the same way.

`EmbeddingSet.lookup(key, caption)` is the embedding of one caption of one
image; `rows_for(keys)` lines the set up with a data source's example order.
"""

import dataclasses
import os
from typing import Sequence

import numpy as np

from t2ijax import errors
from t2ijax.data.sources import attngan_metadata

DEFAULT_EMBEDDING_FILE = 'char-CNN-RNN-embeddings.pickle'
FILENAMES_FILE = 'filenames.pickle'
CLASS_INFO_FILE = 'class_info.pickle'

_HINT = ('The StackGAN birds/flowers metadata (train/ and test/ folders with '
         'char-CNN-RNN-embeddings.pickle and filenames.pickle) comes with the '
         'StackGAN repositories; download it again if a file is missing or damaged.')


@dataclasses.dataclass(frozen=True)
class EmbeddingSet:
  embeddings: np.ndarray          # (N, captions, D) float32
  filenames: tuple[str, ...]      # N keys
  class_ids: np.ndarray | None    # (N,) int, when class_info.pickle exists

  def __post_init__(self):
    object.__setattr__(self, '_row', {k: i for i, k in enumerate(self.filenames)})

  @property
  def num_captions(self) -> int:
    return self.embeddings.shape[1]

  @property
  def dim(self) -> int:
    return self.embeddings.shape[2]

  def row(self, key: str) -> int:
    if key not in self._row:
      raise errors.DataLayoutError(
          f'image {key!r} has no precomputed embedding: filenames.pickle lists '
          f'{len(self.filenames)} other images (e.g. {self.filenames[0]!r}). Use the '
          'embedding pickles of the same data set and split as the images.')
    return self._row[key]

  def lookup(self, key: str, caption_index: int) -> np.ndarray:
    """The (D,) embedding of caption `caption_index` of image `key`."""
    if not 0 <= caption_index < self.num_captions:
      raise errors.DataLayoutError(
          f'caption index {caption_index} is outside 0..{self.num_captions - 1}: the '
          f'embedding pickle holds {self.num_captions} captions per image')
    return self.embeddings[self.row(key), caption_index]

  def rows_for(self, keys: Sequence[str]) -> np.ndarray:
    """(len(keys),) rows of the set, in the order of `keys` (a data source's)."""
    missing = [k for k in keys if k not in self._row]
    if missing:
      raise errors.DataLayoutError(
          f'{len(missing)} of {len(keys)} images have no precomputed embedding '
          f'(e.g. {missing[0]!r}); the pickles list {len(self.filenames)} images. Use '
          'the embedding pickles of the same data set and split as the images.')
    return np.asarray([self._row[k] for k in keys], np.int64)

  def aligned(self, keys: Sequence[str]) -> np.ndarray:
    """(len(keys), captions, D) embeddings in the order of `keys`."""
    return self.embeddings[self.rows_for(keys)]


def _as_embeddings(value, path: str) -> np.ndarray:
  try:
    array = np.asarray(value, np.float32)
  except (TypeError, ValueError):
    array = None
  if array is None or array.ndim not in (2, 3) or array.size == 0:
    shape = getattr(array, 'shape', type(value).__name__)
    raise errors.DataLayoutError(
        f'{path} must hold an (images, captions, dim) or (images, dim) float array, '
        f'got {shape}. {_HINT}')
  if array.ndim == 2:                 # one embedding per image
    array = array[:, None, :]
  if not np.all(np.isfinite(array)):
    raise errors.DataLayoutError(f'{path} holds NaN or Inf values. {_HINT}')
  return array


def read_split(split_dir: str, embedding_file: str = DEFAULT_EMBEDDING_FILE) -> EmbeddingSet:
  """Reads one split folder; raises DataLayoutError naming any problem and the fix."""
  emb_path = os.path.join(split_dir, embedding_file)
  names_path = os.path.join(split_dir, FILENAMES_FILE)
  missing = [p for p in (emb_path, names_path) if not os.path.exists(p)]
  if missing:
    raise errors.DataLayoutError(f'missing embedding metadata: {", ".join(missing)}. {_HINT}')
  embeddings = _as_embeddings(attngan_metadata.load_python2_pickle(emb_path), emb_path)
  names = attngan_metadata.load_python2_pickle(names_path)
  if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
    raise errors.DataLayoutError(
        f'{names_path} must hold a list of image keys (strings), got '
        f'{type(names).__name__}. {_HINT}')
  if len(names) != len(embeddings):
    raise errors.DataLayoutError(
        f'{emb_path} holds {len(embeddings)} images but {names_path} lists '
        f'{len(names)}: the two files come from different data sets or splits. {_HINT}')
  if len(set(names)) != len(names):
    raise errors.DataLayoutError(f'{names_path} lists some images twice. {_HINT}')
  class_ids = None
  class_path = os.path.join(split_dir, CLASS_INFO_FILE)
  if os.path.exists(class_path):
    classes = attngan_metadata.load_python2_pickle(class_path)
    try:
      class_ids = np.asarray(classes, np.int64).reshape(-1)
    except (TypeError, ValueError):
      class_ids = None
    if class_ids is None or len(class_ids) != len(names):
      raise errors.DataLayoutError(
          f'{class_path} must hold one integer class id per image ({len(names)}). {_HINT}')
  return EmbeddingSet(embeddings=embeddings, filenames=tuple(names), class_ids=class_ids)
