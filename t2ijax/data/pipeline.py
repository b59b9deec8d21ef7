"""The input pipeline: a pure function of (seed, global example counter).

Example k of the run (k = step * global_batch + row) is drawn from epoch k // N at
position k % N of that epoch's seeded permutation; its caption, mismatched caption,
crop and flip come from a generator seeded with (seed, k). The data position is
therefore just the step: a resumed run sees exactly the batches an uninterrupted
one would, whatever the number of processes, and each process loads only its own
rows of every global batch. tf.data supplies the parallel loading and prefetch.
"""

import dataclasses
import functools
import io
from typing import Iterator

import numpy as np
import tensorflow as tf
from PIL import Image

from t2ijax import errors
from t2ijax.data import crop as crop_lib
from t2ijax.data import text

# Don't let TensorFlow claim accelerators that jax owns.
tf.config.set_visible_devices([], "GPU")

_PERM_STREAM = 0x5EED   # separates the permutation stream from per-example streams


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
  image_sizes: tuple[int, ...]
  load_size: int
  max_words: int
  random_flip: bool
  bbox_crop: bool
  unknown_words: str
  num_attributes: int

  @classmethod
  def from_config(cls, data_config, num_attributes: int = 0) -> "ExampleSpec":
    sizes = tuple(sorted(int(s) for s in data_config.image_sizes))
    load = data_config.load_size
    if load < 0:
      load = int(sizes[-1] * 76 / 64)   # the official Scale(int(imsize * 76 / 64))
    elif load == 0:
      load = sizes[-1]                  # the crop is the whole (scaled) image
    return cls(sizes, load, data_config.max_words, data_config.random_flip,
               data_config.bbox_crop, data_config.unknown_words, num_attributes)


class ExampleLoader:
  """Loads example k of a split as a dict of fixed-shape numpy arrays."""

  def __init__(self, source, vocab: text.Vocab, class_ids: np.ndarray,
               spec: ExampleSpec, seed: int, shuffle: bool):
    self.source, self.vocab, self.class_ids = source, vocab, np.asarray(class_ids)
    self.spec, self.seed, self.shuffle = spec, seed, shuffle
    self.size = len(self.class_ids)
    # Per loader: the current epoch's permutation and the next one (thread-safe).
    self._permutation = functools.lru_cache(maxsize=2)(self._compute_permutation)

  def _compute_permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, _PERM_STREAM, epoch]).permutation(self.size)

  def index(self, k: int) -> int:
    epoch, pos = divmod(int(k), self.size)
    return int(self._permutation(epoch)[pos]) if self.shuffle else pos

  def _caption(self, record, rng) -> tuple[np.ndarray, int]:
    captions = record["captions"]
    raw = captions[rng.integers(len(captions))]
    ids = self.vocab.encode(raw.decode() if isinstance(raw, bytes) else raw,
                            unknown=self.spec.unknown_words)
    return text.fixed_length(ids, self.spec.max_words, rng)

  def _mismatched_index(self, idx: int, rng) -> int:
    # Another image, of another class where classes exist (as the official code).
    for _ in range(32):
      j = int(rng.integers(self.size))
      if j != idx and self.class_ids[j] != self.class_ids[idx]:
        return j
    return (idx + 1 + int(rng.integers(max(self.size - 1, 1)))) % self.size

  def _images(self, record, rng) -> dict[str, np.ndarray]:
    img = Image.open(io.BytesIO(record["image"])).convert("RGB")
    bbox = np.asarray(record["bbox"])
    if self.spec.bbox_crop and bbox[2] > 0:
      img = crop_lib.cub_bbox_crop(img, bbox)
    img = crop_lib.scale_shorter_side(img, self.spec.load_size)
    size = self.spec.image_sizes[-1]
    w, h = img.size
    top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    img = img.crop((left, top, left + size, top + size))
    if self.spec.random_flip and rng.random() < 0.5:
      img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = {}
    for s in self.spec.image_sizes:
      stage = img if s == size else img.resize((s, s), Image.Resampling.BILINEAR)
      out[f"image{s}"] = np.asarray(stage, np.uint8)
    return out

  def __call__(self, k: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, int(k)])
    idx = self.index(k)
    record = self.source[idx]
    ex = self._images(record, rng)
    ex["caption"], length = self._caption(record, rng)
    ex["caption_len"] = np.int32(length)
    wrong = self._mismatched_index(idx, rng)
    ex["wrong_caption"], wrong_len = self._caption(self.source[wrong], rng)
    ex["wrong_caption_len"] = np.int32(wrong_len)
    ex["class_id"] = np.int32(self.class_ids[idx])
    ex["index"] = np.int32(idx)
    ex["wrong_index"] = np.int32(wrong)   # where wrong_caption came from
    if self.spec.num_attributes:
      ex["attributes"] = np.asarray(record["attributes"], np.int32)
    return ex

  def signature(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    sig = {f"image{s}": ((s, s, 3), np.uint8) for s in self.spec.image_sizes}
    sig.update(caption=((self.spec.max_words,), np.int32), caption_len=((), np.int32),
               wrong_caption=((self.spec.max_words,), np.int32),
               wrong_caption_len=((), np.int32), class_id=((), np.int32),
               index=((), np.int32), wrong_index=((), np.int32))
    if self.spec.num_attributes:
      sig["attributes"] = ((self.spec.num_attributes,), np.int32)
    return sig


def local_rows(global_batch: int, process_index: int, process_count: int) -> range:
  per = global_batch // process_count
  return range(process_index * per, (process_index + 1) * per)


def batches(loader: ExampleLoader, global_batch: int, start_step: int,
            num_steps: int | None, process_index: int = 0, process_count: int = 1,
            num_parallel_calls: int = -1, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of global batches start_step, start_step + 1, ...

  Row r of step s is example k = s * global_batch + r of the run.
  """
  rows = local_rows(global_batch, process_index, process_count)
  sig = loader.signature()
  names = sorted(sig)

  def load(k):
    ex = loader(int(k))
    return [ex[n] for n in names]

  def load_tf(k):
    values = tf.numpy_function(load, [k], [tf.as_dtype(sig[n][1]) for n in names],
                               stateful=False)
    return {n: tf.ensure_shape(v, sig[n][0]) for n, v in zip(names, values)}

  end = None if num_steps is None else start_step + num_steps
  steps = tf.data.Dataset.range(start_step, end) if end is not None else \
      tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  ds = steps.flat_map(lambda s: tf.data.Dataset.range(
      s * global_batch + rows.start, s * global_batch + rows.stop))
  parallel = tf.data.AUTOTUNE if num_parallel_calls < 0 else num_parallel_calls
  ds = ds.map(load_tf, num_parallel_calls=parallel, deterministic=True)
  ds = ds.batch(len(rows), drop_remainder=True).prefetch(prefetch)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return _with_clear_errors(ds.as_numpy_iterator())


def _with_clear_errors(iterator):
  """Re-raises our own errors (unknown word, corrupt image) that tf.data wrapped."""
  try:
    yield from iterator
  except tf.errors.OpError as e:
    for cls in (errors.CaptionError, errors.CorruptImageError, errors.DataLayoutError,
                errors.ConfigError):
      marker = f"{cls.__name__}: "
      if marker in e.message:
        detail = e.message.split(marker, 1)[1].split("\n\n", 1)[0]
        raise cls(detail) from None
    raise
