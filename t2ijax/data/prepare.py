"""Prepares a data source once under the data dir, and opens prepared ones.

  python -m t2ijax.data.prepare --source=cub --manual_dir=DIR [--data_dir=DIR]
  python -m t2ijax.data.prepare --source=folder --manual_dir=DIR_WITH_captions.jsonl

`shapes` is procedural and is prepared automatically on first use; the others need
their raw files in `manual_dir` (the layouts are in each source module's LAYOUT and
are printed when something is missing).
"""

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags, logging

from t2ijax import errors
from t2ijax.data import builder as builder_lib
from t2ijax.data import text


@dataclasses.dataclass
class Prepared:
  builder: builder_lib.CaptionedImages
  vocab: text.Vocab
  class_ids: dict          # split -> np.ndarray[int32]
  name: str

  def source(self, split: str):
    return self.builder.as_data_source(split)


def _source_module(name: str):
  if name == "shapes":
    from t2ijax.data.sources import shapes as m
  elif name == "cub":
    from t2ijax.data.sources import cub as m
  elif name == "coco":
    from t2ijax.data.sources import coco as m
  elif name == "folder":
    from t2ijax.data.sources import folder as m
  else:
    raise errors.ConfigError(
        f"data.source={name!r} is not one of ['coco', 'cub', 'folder', 'shapes']")
  return m


def _reader(data_config):
  src = data_config.source
  module = _source_module(src)
  if src == "shapes":
    s = data_config.shapes
    num = {"train": s.num_train, "test": s.num_test}

    def read(split):
      return module.read_split(split, num[split], s.image_size,
                               data_config.captions_per_image, s.seed), None
    return read

  manual_dir = data_config.manual_dir
  if not manual_dir:
    raise errors.DataLayoutError(
        f"data.source={src!r} needs its raw files: set --config.data.manual_dir=DIR "
        f"where DIR looks like\n{module.LAYOUT}\n{module.PREPARE_HINT}")
  module.check_layout(manual_dir)

  def read(split):
    result = module.read_split(manual_dir, split, data_config.captions_per_image,
                               on_corrupt=data_config.on_corrupt_image)
    if result.num_skipped:
      logging.warning("%s/%s: skipped %d corrupt images", src, split, result.num_skipped)
    return result.examples, result.vocab
  return read


def _builder(data_config, reader=None) -> builder_lib.CaptionedImages:
  data_dir = data_config.data_dir or builder_lib.default_data_dir()
  name = builder_lib.prepared_name(data_config)
  return builder_lib.CaptionedImages(
      reader=reader, data_dir=data_dir, config=tfds.core.BuilderConfig(name=name),
      file_format="array_record")


def prepare(data_config) -> Prepared:
  """Prepares the source if it is not prepared yet, then opens it."""
  b = _builder(data_config)
  if not _complete(b):
    b = _builder(data_config, _reader(data_config))
    logging.info("preparing %s under %s", b.builder_config.name, b.data_dir)
    # tfds files without side files mean an earlier run stopped in between; tfds
    # would reuse its files without calling the reader, leaving nothing to write
    # the side files from, so generate everything again.
    mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if b.is_prepared()
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=data_config.manual_dir or None, download_mode=mode))
    builder_lib.write_side_files(b, data_config.captions_per_image)
  return open_prepared(data_config)


def _complete(b) -> bool:
  return b.is_prepared() and os.path.exists(os.path.join(b.data_path, builder_lib.VOCAB_FILE))


def open_prepared(data_config) -> Prepared:
  b = _builder(data_config)
  if not _complete(b):
    raise errors.DataLayoutError(
        f"data set {b.builder_config.name!r} is not prepared under {b.data_dir}; run "
        f"python -m t2ijax.data.prepare --source={data_config.source} "
        "--manual_dir=RAW_DIR (shapes needs no raw files)")
  path = os.fspath(b.data_path)
  train_ids, test_ids, vocab = text.read_captions_pickle(os.path.join(path, builder_lib.VOCAB_FILE))
  del train_ids, test_ids
  class_ids = {s: np.load(os.path.join(path, f"class_ids_{s}.npy")) for s in builder_lib.SPLITS}
  return Prepared(builder=b, vocab=vocab, class_ids=class_ids, name=b.builder_config.name)


FLAGS = flags.FLAGS


def main(argv):
  del argv
  from t2ijax import config_base
  d = config_base.data_config(FLAGS.source)
  d.manual_dir = FLAGS.manual_dir
  d.data_dir = FLAGS.data_dir
  d.captions_per_image = FLAGS.captions_per_image or (5 if FLAGS.source == "coco" else 10)
  d.on_corrupt_image = FLAGS.on_corrupt_image
  p = prepare(d)
  print(f"prepared {p.name} in {p.builder.data_path}: "
        + ", ".join(f"{s} {len(p.class_ids[s])} images" for s in builder_lib.SPLITS)
        + f", vocabulary {len(p.vocab)} words")


if __name__ == "__main__":
  flags.DEFINE_enum("source", "shapes", ["shapes", "cub", "coco", "folder"], "data source")
  flags.DEFINE_string("manual_dir", "", "raw files (cub, coco, folder)")
  flags.DEFINE_string("data_dir", "", "where prepared data sets go")
  flags.DEFINE_integer("captions_per_image", 0, "0: 10 for cub/shapes/folder, 5 for coco")
  flags.DEFINE_enum("on_corrupt_image", "error", ["error", "skip"], "corrupt image policy")
  app.run(main)
