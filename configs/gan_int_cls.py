"""GAN-INT-CLS (Reed et al., ICML 2016): 64x64 DCGAN-style G, matching-aware D, INT, style encoder.

Variants (reference/stackgan_dfgan_family.md §3.1, `main_cls_int.lua`):
  cub   (default) 64 px from the whole image scaled to 76 (no bird box), random
        crop and flip; ngf 128, ndf 64, nt 128, z 100, batch 64, 600 epochs,
        Adam 2e-4 (0.5, 0.999) x0.5 every 100 epochs, cls_weight 0.5,
        interp_weight 1 at beta 0.5; text: the released char-CNN-RNN embeddings
        (mean of 4 captions of the image), so pass
        --config.text.pickle_dir=DATA/birds (holding train/ and test/ with
        char-CNN-RNN-embeddings.pickle and filenames.pickle). A DAMSM run is
        still needed for evaluation (R-precision): --config.damsm.workdir.
  demo  the built-in shapes at 64 px, ngf = ndf = 16, batch 16, 800 steps:
        pretrains a small DAMSM into <workdir>/damsm and conditions on its
        sentence vector. Measured shapes accuracy of generated images at step
        800 (real images 0.98-1.0; chance 0.17, 0.5, 0.2, 0.2): colour 0.51,
        size 0.74, shape 0.28, position 0.41; style transfer (S of a test
        image, another test caption): colour 0.48, size 0.75, shape 0.26,
        position 0.40 against the caption, while the background agrees with
        the style image only at chance (0.24 of 4): G at this stage largely
        ignores z, so there is little style for S to carry.

  python -m t2ijax.main --config=configs/gan_int_cls.py:demo --workdir=runs/gan_int_cls_demo
  python -m t2ijax.main --config=configs/gan_int_cls.py:demo --workdir=runs/gan_int_cls_demo \
      --mode=sample --config.sample.captions='a large red circle on the left|a small blue star'
  (the sample also writes a style-transfer grid: styles from test images, or
   --config.sample.style_images=a.png,b.png)
  python -m t2ijax.main --config=configs/gan_int_cls.py --workdir=runs/gan_int_cls_cub \
      --config.data.manual_dir=DATA/birds --config.text.pickle_dir=DATA/birds \
      --config.damsm.workdir=runs/damsm_cub
"""

import os

import ml_collections

from t2ijax import config_args
from t2ijax import config_base


def get_config(arg=None):
  arg = config_args.parse_arg(arg, variant='cub')
  variant = config_args.check_choice('variant', arg.variant, ('cub', 'demo'))
  c = config_base.gan_config('gan_int_cls')
  c.data.source = 'cub'
  c.data.image_sizes = (64,)
  c.data.bbox_crop = False       # Reed scales the whole image to 76x76
  c.train.batch_size = 64
  c.train.num_epochs = 600
  c.checkpoint.every_steps = 5000
  if variant == 'demo':
    config_base.gan_demo(c, os.path.dirname(os.path.abspath(__file__)))
    c.data.image_sizes = (64,)
    c.data.shapes.image_size = 64

  c.model = ml_collections.ConfigDict(dict(
      ngf=128, ndf=64, nt=128, z_dim=100,
      nef=-1,                  # the DAMSM's sentence size (used for evaluation)
      num_stages=1,
      style_encoder=True))     # train S (z <- G(z, t)) for style transfer
  c.text = ml_collections.ConfigDict(dict(
      kind='pickle',           # damsm | char_cnn_rnn | pickle (t2ijax/text_conditioning.py)
      char_cnn_rnn_workdir='',  # a configs/char_cnn_rnn.py run, for kind char_cnn_rnn
      pickle_dir='',           # holds <split>/char-CNN-RNN-embeddings.pickle, for kind pickle
      embedding_file='char-CNN-RNN-embeddings.pickle',
      num_captions=4))         # pickle: caption embeddings averaged per example
  c.loss = ml_collections.ConfigDict(dict(
      cls_weight=0.5,          # 0: plain GAN (no mismatched pairs)
      interp_weight=1.0,       # 0: no GAN-INT term
      interp_beta=0.5))
  c.optim = ml_collections.ConfigDict(dict(
      g_lr=2e-4, d_lr=2e-4, b1=0.5, b2=0.999,
      lr_decay=0.5, decay_every_epochs=100,   # <= 0: constant
      ema_decay=-1.0))         # > 0: EMA of G for samples/eval (not official)
  c.sample.style_images = ''   # comma-separated image files for style transfer
  c.sample.num_style = 4       # otherwise this many test-split images
  # Eval, sample grids and --mode=sample: BatchNorm with the batch's statistics
  # (True) or the running averages (False).
  c.sample.bn_batch_stats = False
  c.eval.metrics = ('fid', 'is', 'r_precision')
  if variant == 'demo':
    # The shared GAN demo schedule (batch 16, 800 steps), widths 16 as DM-GAN's.
    c.text.kind = 'damsm'
    c.model.update(ngf=16, ndf=16)
    c.optim.decay_every_epochs = -1
  return c
