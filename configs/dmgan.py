"""DM-GAN: AttnGAN's generator with dynamic-memory refinement, spectral-norm Ds.

Variants (reference/attngan_family.md §4):
  cub   (default) ngf 64, ndf 32, 2 ResBlocks, batch 10, 800 epochs, DAMSM lambda 5,
        10 captions of at most 18 words, 64/128/256 pixels.
  coco  3 ResBlocks, batch 16, 200 epochs, lambda 50, 5 captions of at most 12 words.
  demo  the built-in shapes data at 32/64 pixels (a 32-pixel first stage, this
        project's addition) with small widths: pretrains a small DAMSM into
        <workdir>/damsm, then trains DM-GAN; minutes on a CPU.

  python -m t2ijax.main --config=configs/dmgan.py:demo --workdir=runs/dmgan_demo
  python -m t2ijax.main --config=configs/dmgan.py --workdir=runs/dmgan_cub \
      --config.data.manual_dir=DATA/birds --config.damsm.workdir=runs/damsm_cub
"""

import os

from t2ijax import config_args
from t2ijax import config_base


def get_config(arg=None):
  arg = config_args.parse_arg(arg, variant="cub")
  variant = config_args.check_choice("variant", arg.variant, ("cub", "coco", "demo"))
  c = config_base.gan_config("dmgan")
  c.model.update(ngf=64, ndf=32, r_num=2)
  c.train.batch_size = 10
  c.train.num_epochs = 800
  c.checkpoint.every_steps = 5000
  c.data.source = "cub"
  if variant == "coco":
    config_base.use_coco(c, max_words=12)
    c.model.r_num = 3
    c.train.batch_size = 16
    c.train.num_epochs = 200
    c.loss.damsm_lambda = 50.0
  elif variant == "demo":
    config_base.gan_demo(c, os.path.dirname(os.path.abspath(__file__)))
    # Stages at 32 and 64 pixels (Generator.base_size; not an official size):
    # a quarter of the 64/128 demo's work, so the main job takes minutes.
    c.data.image_sizes = (32, 64)
    c.data.shapes.image_size = 64
  return c
