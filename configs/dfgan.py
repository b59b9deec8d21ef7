"""DF-GAN: one-stage generator with deep text-image fusion, hinge loss + MA-GP.

Variants (reference/stackgan_dfgan_family.md §6.1, the 2022 code):
  cub   (default) 256 px, ngf = ndf = 32, z 100, batch 32, 1300 epochs,
        10 captions of at most 18 words, Adam G 1e-4 / D 4e-4 betas (0, 0.9),
        MA-GP k 2 p 6, sampling noise truncnorm(-2, 2) * 0.88, no EMA.
  coco  as cub with 5 captions per image, 300 epochs.
  demo  the built-in shapes at 64 px, ngf = ndf = 16, batch 16, 800 steps:
        pretrains a small DAMSM into <workdir>/damsm, then trains DF-GAN
        (~3 steps/s on a 2-core CPU; 13 min in all on a loaded one).
        Measured shapes accuracy of generated images (real images: 0.98-1.0):
        step 800: colour 0.71, size 0.55, shape 0.25, position 0.23;
        step 2000 (--config.train.num_steps=2000): colour 0.97, size 0.76,
        shape 0.28, position 0.21 (chance 0.17, 0.5, 0.2, 0.2). Position stays
        at chance: the sentence reaches G only through spatially uniform
        per-channel affines, and the 4x4 start comes from z alone.

  python -m t2ijax.main --config=configs/dfgan.py:demo --workdir=runs/dfgan_demo
  python -m t2ijax.main --config=configs/dfgan.py --workdir=runs/dfgan_cub \
      --config.data.manual_dir=DATA/birds --config.damsm.workdir=runs/damsm_cub
  python -m t2ijax.main --config=configs/dfgan.py:demo --workdir=runs/dfgan_demo \
      --mode=sample --config.sample.captions='a large red circle on the left'
"""

import os

import ml_collections

from t2ijax import config_args
from t2ijax import config_base


def get_config(arg=None):
  arg = config_args.parse_arg(arg, variant='cub')
  variant = config_args.check_choice('variant', arg.variant, ('cub', 'coco', 'demo'))
  c = config_base.gan_config('dfgan')
  c.data.source = 'cub'
  c.data.image_sizes = (256,)
  c.train.batch_size = 32
  # The official loop runs epochs 1 .. max_epoch - 1 (max_epoch 1301 / 301).
  c.train.num_epochs = 1300
  c.checkpoint.every_steps = 5000
  if variant == 'coco':
    config_base.use_coco(c, max_words=18)
    c.train.num_epochs = 300
  elif variant == 'demo':
    # Shapes data, short schedule, logs, eval and DAMSM pretraining as the
    # other GAN demos; the DF-GAN fields below replace its model and optimizer.
    config_base.gan_demo(c, os.path.dirname(os.path.abspath(__file__)))
    c.data.image_sizes = (64,)
    c.data.shapes.image_size = 64

  # DF-GAN's own fields replace the AttnGAN family's (no CA, words or DAMSM loss).
  c.model = ml_collections.ConfigDict(dict(
      ngf=32, ndf=32, z_dim=100,
      nef=-1,             # the sentence size of the DAMSM used (256 officially)
      num_stages=1))
  c.loss = ml_collections.ConfigDict(dict(
      magp_k=2.0, magp_p=6.0))   # MA-GP: k * mean ||grad||^p on real pairs
  c.optim = ml_collections.ConfigDict(dict(
      g_lr=1e-4, d_lr=4e-4, b1=0.0, b2=0.9,
      # > 0: keep an EMA of G for samples and evaluation (not in the official code).
      ema_decay=-1.0))
  c.sample.truncation = True     # eval and --mode=sample: truncated noise
  c.sample.trunc_rate = 0.88
  if variant == 'demo':
    c.model.update(ngf=16, ndf=16)
  return c
