"""MirrorGAN: AttnGAN's generator with global-local attention, plus re-description.

Variants (reference/attngan_family.md §5):
  cub   (default) ngf 32, ndf 64, 2 ResBlocks, batch 12, 650 epochs, no DAMSM
        loss (LAMBDA 0), STREAM re-description weight 10 (LAMBDA1), 10 captions
        of at most 18 words, 64/128/256 pixels. Needs a DAMSM run (its text
        encoder is the STEM) and a STREAM run (configs/stream.py).
  coco  no official config: cub's with 3 ResBlocks, batch 14 and 5 captions of
        at most 12 words (AttnGAN's COCO settings), 120 epochs.
  demo  the built-in shapes data at 64/128 pixels with small widths: pretrains
        a small DAMSM into <workdir>/damsm and a small STREAM into
        <workdir>/stream when missing, then trains MirrorGAN; minutes on a CPU.

  python -m t2ijax.main --config=configs/mirrorgan.py:demo --workdir=runs/mirrorgan_demo
  python -m t2ijax.main --config=configs/stream.py --workdir=runs/stream_cub \
      --config.data.manual_dir=DATA/birds --config.model.resnet_weights=PATH/resnet152.pth
  python -m t2ijax.main --config=configs/mirrorgan.py --workdir=runs/mirrorgan_cub \
      --config.data.manual_dir=DATA/birds --config.damsm.workdir=runs/damsm_cub \
      --config.stream.workdir=runs/stream_cub
"""

import os

import ml_collections

from t2ijax import config_args
from t2ijax import config_base


def get_config(arg=None):
  arg = config_args.parse_arg(arg, variant="cub")
  variant = config_args.check_choice("variant", arg.variant, ("cub", "coco", "demo"))
  c = config_base.gan_config("mirrorgan")
  c.model.update(ngf=32, ndf=64, r_num=2)
  c.train.batch_size = 12
  c.train.num_epochs = 650
  c.checkpoint.every_steps = 5000
  c.data.source = "cub"
  # Officially LAMBDA 0: the generator loss has no DAMSM term.
  c.loss.damsm_lambda = 0.0
  c.loss.redescription_weight = 10.0      # LAMBDA1
  c.stream = ml_collections.ConfigDict(dict(
      # A STREAM run (configs/stream.py) on the same data and vocabulary.
      workdir="",
      # When workdir is empty and this is set (the demo), a STREAM is
      # pretrained with this config into <workdir>/stream first.
      pretrain=ml_collections.ConfigDict(),
  ))
  configs_dir = os.path.dirname(os.path.abspath(__file__))
  if variant == "coco":
    config_base.use_coco(c, max_words=12)
    c.model.r_num = 3
    c.train.batch_size = 14
    c.train.num_epochs = 120
  elif variant == "demo":
    config_base.gan_demo(c, configs_dir)
    pretrain = config_base.load_config_file(os.path.join(configs_dir, "stream.py"), "demo")
    # The same captions (hence vocabulary) and final image size as the GAN's.
    pretrain.data.captions_per_image = c.data.captions_per_image
    pretrain.data.max_words = c.data.max_words
    pretrain.data.image_sizes = (max(c.data.image_sizes),)
    pretrain.data.shapes = c.data.shapes.copy_and_resolve_references()
    pretrain.data.update(load_size=c.data.load_size, random_flip=c.data.random_flip)
    c.stream.pretrain = pretrain
  return c
