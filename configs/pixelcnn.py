"""Gated Conditional PixelCNN (van den Oord et al. 2016) on the built-in shapes.

Variants (all on shapes at 32x32, 8-bit RGB, no resampling and no flips):
  unconditional (default)  p(x)
  class        p(x | one-hot shapes class id); class_input=attributes for the
               one-hots of all five attributes
  caption      p(x | caption): DAMSM sentence vector (global) + a deconvolved map
               of it with per-location attention over the DAMSM word features
               (spatial); a small DAMSM is pretrained first into <workdir>/damsm
               unless --config.damsm.workdir names one
  autoencoder  the paper's section 2.4 PixelCNN auto-encoder: an encoder to a
               32-d bottleneck, trained end to end with the decoder
Arguments: scale=demo (default; 8 layers of p = 24, batch 16, 300 steps) or
scale=paper (20 layers, p = 384, 5x5, first layer 7x7).

  python -m t2ijax.main --config=configs/pixelcnn.py:caption --workdir=runs/pcnn_caption
  python -m t2ijax.main --config=configs/pixelcnn.py:caption --workdir=runs/pcnn_caption \
      --mode=eval
  python -m t2ijax.main --config=configs/pixelcnn.py:caption --workdir=runs/pcnn_caption \
      --mode=sample --config.sample.captions='a large red circle on the left|a small blue square at the top'
"""

import os

import ml_collections

from t2ijax import config_args
from t2ijax import config_base

VARIANTS = ('unconditional', 'class', 'caption', 'autoencoder')


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, variant='unconditional', scale='demo',
                              class_input='class_id')
  variant = config_args.check_choice('variant', arg.variant, VARIANTS)
  scale = config_args.check_choice('scale', arg.scale, ('demo', 'paper'))

  c = config_base.base_config('pixelcnn')
  size = 32
  c.data.source = 'shapes'
  c.data.image_sizes = (size,)
  # The crop is the whole image (no resampling) and nothing is flipped: the
  # captions state positions, and 8-bit likelihoods want the images as rendered.
  config_base.keep_positions(c.data)
  c.data.captions_per_image = 10
  c.data.max_words = 18
  c.data.shapes.update(num_train=4000, num_test=1000, image_size=size, seed=0)

  c.model = ml_collections.ConfigDict(dict(
      condition={'unconditional': 'none', 'class': 'class', 'caption': 'caption',
                 'autoencoder': 'autoencoder'}[variant],
      num_layers=8, features=24, kernel_size=3, first_kernel_size=5,
      skip_features=24, head_features=48,
      spatial_features=0,          # > 0: also a spatial map s = m(h)
      word_attention=False,        # caption: attend to DAMSM words per location
      class_input=arg.class_input,  # class: 'class_id' | 'attributes'
      bottleneck=32, encoder_width=32,
      # The gates' conditioning projections start at zero: a conditional model
      # starts as the unconditional one (random ones trail it, issue 6).
      zero_init_conditioning=True))
  # conditioning_lr_scale: a factor on Adam's step for the conditioning nets and
  # the gates' projections of the condition (the caption variant sets 0.1).
  # schedule: 'constant' or 'cosine' (to 0 at train.num_steps).
  c.optim = ml_collections.ConfigDict(dict(lr=1e-3, b1=0.9, b2=0.999, grad_clip=1.0,
                                          conditioning_lr_scale=1.0, schedule='constant'))
  c.train.batch_size = 16
  c.train.num_epochs = -1
  c.train.num_steps = 300
  c.checkpoint.every_steps = 100
  c.log.update(every_steps=50, sample_every_steps=-1, num_samples=4)
  c.eval.update(batch_size=50, num_batches=-1)
  # class/caption: cached samples of the first rows of each eval batch, judged
  # against their labels by the shapes attribute classifier.
  c.eval.samples_per_batch = 10
  c.eval.shapes_classifier = True
  # class/caption: also the test bits/dim under each image's neighbour's
  # condition; the paired difference is what the model draws from its own.
  c.eval.mismatched_condition = True
  c.sample = ml_collections.ConfigDict(dict(
      captions='', captions_file='', class_ids='0,7,14,21,28',
      num_noise=4, num_rows=4, seed=100,
      # Divides every sub-pixel's logits (also for the samples eval judges):
      # 1 draws from the model as trained, < 1 sharper, cleaner images.
      temperature=1.0))
  c.damsm = ml_collections.ConfigDict(dict(workdir='', pretrain=ml_collections.ConfigDict()))

  if variant == 'caption':
    c.model.update(spatial_features=12, word_attention=True)
    # Adam moves every weight by ~lr whatever its gradient, so a projection of a
    # dense 256-d DAMSM vector shifts each gate by ~lr * |h|_1 (~25 x a bias's
    # step; a one-hot's by ~lr) per update: noise that made the caption model
    # trail the unconditional one at full lr (issue 6; docs/models.md).
    c.optim.conditioning_lr_scale = 0.1
    configs_dir = os.path.dirname(os.path.abspath(__file__))
    pretrain = config_base.load_config_file(os.path.join(configs_dir, 'damsm.py'), 'demo')
    # The same captions (hence vocabulary) and image size as the PixelCNN's data.
    pretrain.data.captions_per_image = c.data.captions_per_image
    pretrain.data.max_words = c.data.max_words
    pretrain.data.image_sizes = (size,)
    pretrain.data.shapes.update(num_train=4000, num_test=1000, image_size=size)
    pretrain.train.num_steps = 400
    c.damsm.pretrain = pretrain
  if variant == 'autoencoder':
    c.model.update(spatial_features=12)

  if scale == 'paper':
    c.model.update(num_layers=20, features=384, kernel_size=5, first_kernel_size=7,
                   skip_features=384, head_features=768)
    c.train.num_steps = 200_000
    c.checkpoint.every_steps = 5000
  return c
