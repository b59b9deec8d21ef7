"""Metric writers: TensorBoard (clu) plus one JSON object per line in metrics.jsonl,
and the run's small files (config, eval summaries, sample PNGs).

Only process 0 writes anything; the other processes of a multi-process run get a
writer that discards. Workdirs may be local paths or remote ones such as
gs://bucket/run (through tf.io.gfile); metrics.jsonl is kept for local workdirs
only, since object stores cannot append.
"""

import io
import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers


class NullWriter(metric_writers.MetricWriter):
  """Discards everything: what processes other than 0 write to."""

  def write_scalars(self, step, scalars):
    pass

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


class JsonlWriter(NullWriter):
  """Appends `{"step": s, "time": t, name: value, ...}` lines; easy to grep and plot."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(path), exist_ok=True)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {"step": int(step), "time": round(time.time(), 3)}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


def is_remote(path: str) -> bool:
  return "://" in path


def create(workdir: str) -> metric_writers.MetricWriter:
  if jax.process_index() != 0:
    return NullWriter()
  tb = metric_writers.create_default_writer(workdir, asynchronous=True)
  if is_remote(workdir):
    return tb
  return metric_writers.MultiWriter([tb, JsonlWriter(os.path.join(workdir, "metrics.jsonl"))])


def _gfile():
  import tensorflow as tf
  return tf.io.gfile


def write_bytes(path: str, data: bytes) -> str | None:
  """Writes a whole file from process 0 (local or remote); others write nothing.

  Local files go through a temporary name and a rename, so a reader never sees
  half a file.
  """
  if jax.process_index() != 0:
    return None
  if is_remote(path):
    gfile = _gfile()
    gfile.makedirs(os.path.dirname(path))
    with gfile.GFile(path, "wb") as f:
      f.write(data)
    return path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
  return path


def write_text(path: str, text: str) -> str | None:
  return write_bytes(path, text.encode("utf-8"))


def save_png(path: str, image: np.ndarray) -> str | None:
  """A uint8 (H, W, 3) image as a PNG, from process 0."""
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  return write_bytes(path, buffer.getvalue())
