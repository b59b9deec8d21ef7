"""Fields every method's config shares: data, mesh, checkpointing, logging.

A method config (configs/<method>.py) starts from `base_config()` and fills in
its model, losses and optimizer. Everything a run needs is in the resulting
ConfigDict, which is written to the workdir; placeholders such as
`model.n_words = -1` are resolved from the data set at start-up and the resolved
config is what gets saved.
"""

import ml_collections


def data_config(source: str = "shapes") -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.source = source                  # shapes | cub | coco | folder
  # Where prepared (tfds) data sets live; '' means $T2IJAX_DATA_DIR or
  # ~/.cache/t2ijax/datasets.
  d.data_dir = ""
  # Raw files for cub/coco/folder (the official layouts, or captions.jsonl).
  d.manual_dir = ""
  d.train_split = "train"
  d.eval_split = "test"
  d.captions_per_image = 10
  d.max_words = 18                   # WORDS_NUM: longer captions are sub-sampled
  d.unknown_words = "skip"           # skip | unk | error
  d.on_corrupt_image = "error"       # error | skip (checked once, at preparation)
  # Image sizes per stage (the largest is the crop size); the crop is taken from
  # the image scaled so its shorter side is int(largest * 76 / 64), as officially.
  d.image_sizes = (64, 128, 256)
  d.load_size = -1                   # -1: int(largest * 76 / 64)
  d.random_flip = True
  d.bbox_crop = True                 # CUB's 1.5x bounding-box crop (when boxes exist)
  d.num_parallel_calls = -1          # tf.data map parallelism; -1 = AUTOTUNE
  d.prefetch = 2
  d.shapes = ml_collections.ConfigDict(dict(
      num_train=4000, num_test=1000, image_size=64, seed=0))
  return d


def base_config(method: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  c.data = data_config()
  c.mesh = ml_collections.ConfigDict(dict(
      # -1 fills the axis with the remaining devices; default: pure data parallel.
      shape=(-1, 1), axes=("data", "model")))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=48,             # global batch, over all processes and devices
      num_steps=-1,              # -1: derive from num_epochs
      num_epochs=600,
  ))
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3, use_async=True))
  c.log = ml_collections.ConfigDict(dict(
      every_steps=50, sample_every_steps=1000, num_samples=8))
  c.eval = ml_collections.ConfigDict(dict(
      every_steps=-1,             # -1: only at the end of training
      num_batches=-1,             # -1: the whole eval split
      batch_size=100))
  return c
