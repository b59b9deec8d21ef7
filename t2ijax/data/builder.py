"""Writes a data source once as a tfds data set (ArrayRecord, random access).

Every source (shapes, cub, coco, folder) becomes the same features: the encoded
image bytes as they were on disk (no re-encoding), an optional CUB bounding box,
the captions as text, a class id, a key and, for shapes, attribute labels. Beside
the tfds files the builder writes the vocabulary as an official-layout
`captions.pickle` (the released one for CUB/COCO when present) and a small index
of class ids per split, so the pipeline can pick mismatched captions without
reading images.
"""

import hashlib
import os
from typing import Callable, Iterable

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from t2ijax import errors
from t2ijax.data import text
from t2ijax.data.sources import base

SPLITS = ("train", "test")
VOCAB_FILE = "captions.pickle"


def default_data_dir() -> str:
  return os.environ.get("T2IJAX_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "t2ijax", "datasets")


def prepared_name(data_config) -> str:
  """A tfds config name that changes whenever the prepared content would."""
  src, cpi = data_config.source, data_config.captions_per_image
  if src == "shapes":
    s = data_config.shapes
    return (f"shapes_{s.image_size}px_{s.num_train}_{s.num_test}_c{cpi}_seed{s.seed}")
  if src in ("cub", "coco"):
    return f"{src}_c{cpi}_{data_config.on_corrupt_image}"
  if src == "folder":
    digest = hashlib.sha1(os.path.abspath(data_config.manual_dir).encode()).hexdigest()[:10]
    return f"folder_{digest}_c{cpi}"
  raise errors.ConfigError(
      f"data.source={src!r} is not one of ['coco', 'cub', 'folder', 'shapes']")


# A reader returns (examples, official vocabulary or None) for a split.
Reader = Callable[[str], tuple[Iterable[base.RawExample], "text.Vocab | None"]]


class CaptionedImages(tfds.core.GeneratorBasedBuilder):
  """Images with several captions each; one tfds config per prepared source."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "See t2ijax.data.prepare (python -m t2ijax.data.prepare --help)."

  def __init__(self, *, reader: Reader | None = None, **kwargs):
    self._reader = reader
    self.official_vocab: text.Vocab | None = None
    self.all_captions: dict[str, list[list[str]]] = {}
    self.class_ids: dict[str, list[int]] = {}
    super().__init__(**kwargs)

  def _info(self):
    f = tfds.features
    return tfds.core.DatasetInfo(
        builder=self,
        features=f.FeaturesDict({
            "image": f.Tensor(shape=(), dtype=np.object_),   # encoded bytes, as on disk
            "bbox": f.Tensor(shape=(4,), dtype=np.float32),  # x, y, w, h; -1s when none
            "captions": f.Sequence(f.Text()),
            "class_id": f.Scalar(dtype=np.int32),
            "key": f.Text(),
            "attributes": f.Sequence(f.Scalar(dtype=np.int32)),
        }),
        # Keep the source's order (the official file order), not tfds's hash order.
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._reader is None:
      raise errors.DataLayoutError("this data set is not prepared; run t2ijax.data.prepare")
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    examples, vocab = self._reader(split)
    if vocab is not None:
      self.official_vocab = vocab
    captions, classes = [], []
    for i, ex in enumerate(examples):
      captions.append(list(ex.captions))
      classes.append(int(ex.class_id))
      yield i, {
          "image": _image_bytes(ex),
          "bbox": np.asarray(ex.bbox if ex.bbox is not None else (-1, -1, -1, -1), np.float32),
          "captions": list(ex.captions),
          "class_id": int(ex.class_id),
          "key": ex.key,
          "attributes": list(ex.attributes or ()),
      }
    if not captions:
      raise errors.DataLayoutError(f"the {split!r} split of this data source is empty")
    self.all_captions[split] = captions
    self.class_ids[split] = classes


def _image_bytes(ex: base.RawExample) -> bytes:
  if ex.image_bytes is not None:
    return ex.image_bytes
  with open(ex.image_path, "rb") as f:
    return f.read()


def write_side_files(builder: CaptionedImages, captions_per_image: int) -> None:
  """captions.pickle (official layout) and per-split class ids beside the tfds files."""
  vocab = builder.official_vocab or text.Vocab.build(
      c for split in SPLITS for caps in builder.all_captions[split] for c in caps)
  ids = {}
  for split in SPLITS:
    ids[split] = [vocab.encode(c, unknown="skip") for caps in builder.all_captions[split]
                  for c in caps[:captions_per_image]]
  out = os.fspath(builder.data_path)
  for split in SPLITS:
    np.save(os.path.join(out, f"class_ids_{split}.npy"),
            np.asarray(builder.class_ids[split], np.int32))
  # Last: prepare treats the vocabulary file as the mark of a complete data set.
  text.write_captions_pickle(os.path.join(out, VOCAB_FILE), ids["train"], ids["test"], vocab)
  logging.info("wrote vocabulary of %d words and class index to %s", len(vocab), out)
