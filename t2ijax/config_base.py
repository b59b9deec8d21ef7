"""Fields every method's config shares: data, mesh, checkpointing, logging.

A method config (configs/<method>.py) starts from `base_config()` and fills in
its model, losses and optimizer. Everything a run needs is in the resulting
ConfigDict, which is written to the workdir; placeholders such as
`model.n_words = -1` are resolved from the data set at start-up and the resolved
config is what gets saved.
"""

import os

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
  # -1: int(largest * 76 / 64), randomly cropped (official); 0: the largest
  # size, so the crop is the whole image (see keep_positions).
  d.load_size = -1
  d.random_flip = True
  d.bbox_crop = True                 # CUB's 1.5x bounding-box crop (when boxes exist)
  d.num_parallel_calls = -1          # tf.data map parallelism; -1 = AUTOTUNE
  d.prefetch = 2
  d.shapes = ml_collections.ConfigDict(dict(
      num_train=4000, num_test=1000, image_size=64, seed=0))
  return d


def keep_positions(data_config: ml_collections.ConfigDict) -> None:
  """No flips and no random crops: for captions that say where things are.

  The shapes captions state left / right / top / bottom / centre, with anchors
  0.2 of the side apart: a flip swaps left and right, and the official random
  crop (from 76/64 of the size) shifts objects by up to 0.16 of the side, so
  both would teach the text-image models positions the captions contradict.
  """
  data_config.random_flip = False
  data_config.load_size = 0


def use_coco(c: ml_collections.ConfigDict, max_words: int) -> None:
  """COCO-2014 as the AttnGAN family reads it: 5 captions, no bounding boxes."""
  c.data.source = "coco"
  c.data.captions_per_image = 5
  c.data.max_words = max_words
  c.data.bbox_crop = False


def base_config(method: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  c.data = data_config()
  c.mesh = ml_collections.ConfigDict(dict(
      # -1 fills the axis with the remaining devices; default: pure data parallel.
      shape=(-1, 1), axes=("data", "model")))
  # How the train state (parameters, optimizer states, EMA, batch statistics)
  # is laid out over the mesh; t2ijax/sharding_rules.py explains the rules. The
  # plan and the per-device memory it implies are logged at start-up.
  c.sharding = ml_collections.ConfigDict(dict(
      # data_parallel: the state is replicated on every device.
      # fsdp: each state leaf of at least fsdp_min_size_mb is split over 'data'.
      strategy="data_parallel",
      fsdp_min_size_mb=1.0,
      # With mesh axis 'model' > 1: kernels with at least this many output
      # features (the widest convolutions) split their last axis over 'model';
      # -1 turns this off.
      model_min_features=256,
      # ((regex, spec), ...) over state paths such as
      # 'nets/G/params/stage1/upblock_0/conv/kernel', tried before the strategy;
      # the first match wins. spec: 'replicate' | 'fsdp' | 'model' | 'model+fsdp'
      # | one entry per axis, e.g. '_,_,_,model' or logical names 'kh,kw,cin,cout'.
      rules=(),
      # ((logical name, mesh axis or None), ...) for the logical names in rules.
      logical_axis_rules=(),
  ))
  c.precision = ml_collections.ConfigDict(dict(
      # float32 | bfloat16: the dtype networks compute in (parameters, optimizer
      # states and losses stay float32; t2ijax/precision.py). Every text-to-image
      # method honours bfloat16; the encoder pretraining methods refuse it.
      compute_dtype="float32",
  ))
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


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """get_config(arg) of a config file, e.g. the DAMSM config a GAN config embeds."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "t2ijax_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def gan_config(method: str) -> ml_collections.ConfigDict:
  """Fields shared by the AttnGAN-family GANs (AttnGAN, DM-GAN, MirrorGAN, ...)."""
  c = base_config(method)
  c.data.image_sizes = (64, 128, 256)
  c.data.captions_per_image = 10
  c.data.max_words = 18
  c.damsm = ml_collections.ConfigDict(dict(
      # A DAMSM run (configs/damsm.py) whose encoders condition and judge G.
      workdir="",
      # When workdir is empty and this is set (the demo variants), a DAMSM is
      # pretrained with this config into <workdir>/damsm first.
      pretrain=ml_collections.ConfigDict(),
  ))
  c.model = ml_collections.ConfigDict(dict(
      # nef -1: the text features' size of the DAMSM used (256 officially).
      ngf=32, ndf=64, r_num=2, z_dim=100, ncf=100, nef=-1, num_stages=3,
      # Reproduce the official attention padding-mask bug (reference §3.3): on
      # when running converted official weights, off (correct masks) otherwise.
      official_mask_bug=False))
  c.loss = ml_collections.ConfigDict(dict(damsm_lambda=5.0, kl_weight=1.0))
  c.optim = ml_collections.ConfigDict(dict(
      g_lr=2e-4, d_lr=2e-4, b1=0.5, b2=0.999, ema_decay=0.999))
  c.sample = ml_collections.ConfigDict(dict(
      captions="",          # '|'-separated captions for --mode=sample
      captions_file="",     # or a file with one caption per line
      num_noise=4,          # noise draws per caption
      interpolate_steps=0,  # >0: also interpolate between the first two captions
      seed=100))            # the official sampling seed
  c.eval.batch_size = 100
  # On `shapes`, judge generated images with the attribute classifier (trained
  # once on real shapes images and cached under the data dir).
  c.eval.shapes_classifier = True
  # Generated-image metrics (t2ijax/evaluation/suite.py). FID and IS run only
  # when inception_weights (and, for FID, fid_stats) are set; otherwise the
  # result says they were skipped and why. R-precision needs only the DAMSM.
  c.eval.metrics = ("fid", "is", "r_precision")
  # Images generated from test captions: 30000 in the papers (several passes
  # over the split, a random caption each time); -1: eval.num_batches batches.
  c.eval.num_images = -1
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth (its GitHub release) or
  # a .msgpack from t2ijax.evaluation.features.save_inception_variables.
  c.eval.inception_weights = ""
  # The Inception Score's classifier: "" = the ImageNet logits of the FID
  # Inception above (COCO protocol); or a directory from python -m
  # t2ijax.convert --kind=cub_inception --src=.../model.ckpt-5000 --dst=DIR:
  # StackGAN's Inception fine-tuned on CUB / flowers (their IS protocol).
  c.eval.is_classifier = ""
  # Reference statistics of real images (pytorch-fid .npz: mu, sigma), e.g.
  # from python -m t2ijax.evaluation.fid --save_stats.
  c.eval.fid_stats = ""
  c.eval.inception_batch_size = 50
  return c


def gan_demo(c: ml_collections.ConfigDict, configs_dir: str) -> None:
  """The demo variant of a GAN config: built-in shapes at 64/128 pixels, small
  widths, and a small DAMSM pretrained first into <workdir>/damsm."""
  c.data.source = "shapes"
  c.data.image_sizes = (64, 128)
  c.data.shapes.update(num_train=4000, num_test=1000, image_size=128)
  keep_positions(c.data)
  # Measured on shapes (DM-GAN, 2-core CPU): at ngf 8 the samples were still
  # noise after 600 steps; at ngf 16 colours are right by step 400 and colour,
  # size and shape beat chance by step 800 (README, "DM-GAN demo").
  c.model.update(num_stages=2, ngf=16, ndf=16, r_num=1)
  c.train.batch_size = 16
  c.train.num_epochs = -1
  c.train.num_steps = 800
  c.checkpoint.every_steps = 200
  c.log.update(every_steps=25, sample_every_steps=200)
  c.eval.update(batch_size=50, num_batches=10)
  # 0.999 (official) averages over ~1000 steps, longer than the demo itself.
  c.optim.ema_decay = 0.99
  pretrain = load_config_file(os.path.join(configs_dir, "damsm.py"), "demo")
  # The same captions, hence the same vocabulary, as the GAN's data.
  pretrain.data.captions_per_image = c.data.captions_per_image
  pretrain.data.max_words = c.data.max_words
  pretrain.train.num_steps = 400
  c.damsm.pretrain = pretrain
