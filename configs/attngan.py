"""AttnGAN: attentional multi-stage generator trained with the DAMSM loss.

Variants (reference/attngan_family.md §3):
  cub   (default) ngf 32, ndf 64, 2 ResBlocks, batch 20, 600 epochs, lambda 5,
        10 captions of at most 18 words, 64/128/256 pixels.
  coco  ngf 48, ndf 96, 3 ResBlocks, batch 14, 120 epochs, lambda 50, 5 captions
        of at most 12 words.
  demo  the built-in shapes data at 64/128 pixels, small widths (dmgan:demo's
        widths; that one runs at 32/64).
"""

import os

from t2ijax import config_args
from t2ijax import config_base


def get_config(arg=None):
  arg = config_args.parse_arg(arg, variant="cub")
  variant = config_args.check_choice("variant", arg.variant, ("cub", "coco", "demo"))
  c = config_base.gan_config("attngan")
  c.model.update(ngf=32, ndf=64, r_num=2)
  c.train.batch_size = 20
  c.train.num_epochs = 600
  c.checkpoint.every_steps = 5000
  c.data.source = "cub"
  if variant == "coco":
    config_base.use_coco(c, max_words=12)
    c.model.update(ngf=48, ndf=96, r_num=3)
    c.train.batch_size = 14
    c.train.num_epochs = 120
    c.loss.damsm_lambda = 50.0
  elif variant == "demo":
    config_base.gan_demo(c, os.path.dirname(os.path.abspath(__file__)))
  return c
