"""StackGAN (v1), the StackGAN-Pytorch networks, trained in two phases.

Stage-I runs first; Stage-II loads the finished Stage-I run named in
model.stage1_workdir (its G is frozen inside Stage-II's G) and uses its DAMSM.

Variants (reference/stackgan_dfgan_family.md §4.6, §4.8, §4.9):
  cub         (default) Stage-I on CUB at 64 px: GF_DIM 128, DF_DIM 64, CA code
              128, z 100, batch 64, 600 epochs, lr 2e-4 halved every 50 epochs
              (the TF release's CUB schedule and widths, on the PyTorch
              networks; the PyTorch release ships COCO settings only).
  cub_stage2  Stage-II at 256 px: 4 ResBlocks, 600 epochs, lr halved every 100.
  coco        Stage-I, coco_s1.yml: GF_DIM 192, DF_DIM 96, batch 256 (128 on
              each of 2 GPUs), 120 epochs, lr halved every 20 epochs.
  coco_stage2 Stage-II, coco_s2.yml: 2 ResBlocks, batch 80, 100 epochs, lr
              halved every 20 epochs.
  demo        Stage-I on the built-in shapes at 64 px, small widths, 800
              steps; pretrains a small DAMSM into <workdir>/damsm first.
  demo_stage2 Stage-II on shapes at 128 px from the demo Stage-I run in
              runs/stackgan_demo (and its DAMSM).
KL weight 2.0, Adam betas (0.5, 0.999) everywhere; no EMA (optim.ema_decay -1).
The conditioning text is the frozen DAMSM's sentence vector (the official
networks read 1024-d char-CNN-RNN embeddings; the CA takes any size).

  python -m t2ijax.main --config=configs/stackgan.py:demo --workdir=runs/stackgan_demo
  python -m t2ijax.main --config=configs/stackgan.py:demo_stage2 \
      --workdir=runs/stackgan_demo_stage2
  python -m t2ijax.main --config=configs/stackgan.py:cub_stage2 --workdir=runs/stackgan_cub2 \
      --config.model.stage1_workdir=runs/stackgan_cub --config.data.manual_dir=DATA/birds
"""

import os

import ml_collections

from t2ijax import config_args
from t2ijax import config_base

VARIANTS = ('cub', 'cub_stage2', 'coco', 'coco_stage2', 'demo', 'demo_stage2')


def get_config(arg=None):
  arg = config_args.parse_arg(arg, variant='cub')
  variant = config_args.check_choice('variant', arg.variant, VARIANTS)
  stage = 2 if variant.endswith('_stage2') else 1
  base = variant.replace('_stage2', '')
  c = config_base.gan_config('stackgan')
  c.data.source = 'cub'
  c.data.image_sizes = (64,) if stage == 1 else (256,)
  c.train.batch_size = 64
  c.train.num_epochs = 600
  c.checkpoint.every_steps = 2000
  c.model = ml_collections.ConfigDict(dict(
      stage=stage,
      ngf=128,           # GAN.GF_DIM: Stage-I is 8 * ngf wide at 4x4; Stage-II's encoder ngf .. 4 ngf
      ndf=64,            # GAN.DF_DIM
      ncf=128,           # GAN.CONDITION_DIM: the CA code, also the D's condition
      z_dim=100,         # Stage-II takes Stage-I's
      r_num=4,           # Stage-II ResBlocks
      nef=-1,            # text embedding size: the DAMSM's sentence (1024 for char-CNN-RNN)
      num_stages=1,      # one image size (and one D) per run
      # Stage-II: the finished Stage-I run, and the command that trains it.
      stage1_workdir='',
      stage1_config=f'configs/stackgan.py:{base}',
      # The official Stage-II leaves the frozen Stage-I's BatchNorm in train mode.
      stage1_bn_train=True))
  c.loss = ml_collections.ConfigDict(dict(kl_weight=2.0))
  c.optim = ml_collections.ConfigDict(dict(
      g_lr=2e-4, d_lr=2e-4, b1=0.5, b2=0.999,
      lr_decay_epochs=50 if stage == 1 else 100,   # halve both lrs every this many epochs
      ema_decay=-1.0))   # > 0: keep an EMA of G for samples and evaluation
  if base == 'coco':
    config_base.use_coco(c, max_words=12)
    c.model.update(ngf=192, ndf=96, r_num=2)
    c.train.batch_size = 256 if stage == 1 else 80
    c.train.num_epochs = 120 if stage == 1 else 100
    c.optim.lr_decay_epochs = 20
  elif base == 'demo':
    config_base.gan_demo(c, os.path.dirname(os.path.abspath(__file__)))
    size = 64 if stage == 1 else 128
    c.data.image_sizes = (size,)
    c.data.shapes.image_size = size
    c.model.update(num_stages=1, ngf=32 if stage == 1 else 16, ndf=16, r_num=2)
    c.optim.ema_decay = -1.0
    if stage == 2:
      c.model.stage1_workdir = os.path.join('runs', 'stackgan_demo')
      # Stage-II uses the Stage-I run's DAMSM: nothing to pretrain.
      c.damsm.pretrain = ml_collections.ConfigDict()
  return c
