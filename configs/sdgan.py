"""SD-GAN: AttnGAN with SCBN and a Siamese contrastive loss (no official code).

Our reading of the paper (reference/attngan_family.md §6; the choices it
leaves open are listed in t2ijax/trainers/sdgan.py and the README):
  G = AttnGAN's with SCBN: sentence-level in the init stage's upBlocks,
      word-level (per-pixel attention over the words -> 1x1 Linear -> gamma,
      beta) in every refinement-stage ResBlock and upBlock.
  D = AttnGAN's per stage + a Siamese head (Dense on the 4x4 trunk -> unit
      vector of siamese_dim).
  Pairs: inside each batch, row i with the next row of the same class id
      (positive) or, without one, the next row (negative).
  Contrastive loss, margin 1.0, positive floor 0.1, on D's Siamese embeddings:
      of real pairs in D's objective, of generated pairs in G's, weight 1 each.

Variants (AttnGAN's settings, as SD-GAN builds on them; SD-GAN's own batch and
epochs are not in our reference):
  cub   (default) ngf 32, ndf 64, 2 ResBlocks, batch 20, 600 epochs, lambda 5,
        10 captions of at most 18 words, 64/128/256 pixels.
  coco  ngf 48, ndf 96, 3 ResBlocks, batch 14, 120 epochs, lambda 50, 5 captions
        of at most 12 words. COCO's class ids are one per image, so every
        in-batch pair is negative (no positives without a second caption).
  demo  the built-in shapes data at 64/128 pixels with small widths, as the
        other GAN demos: pretrains a small DAMSM into <workdir>/damsm first.

  python -m t2ijax.main --config=configs/sdgan.py:demo --workdir=runs/sdgan_demo
  python -m t2ijax.main --config=configs/sdgan.py --workdir=runs/sdgan_cub \
      --config.data.manual_dir=DATA/birds --config.damsm.workdir=runs/damsm_cub
"""

import os

from t2ijax import config_args
from t2ijax import config_base


def get_config(arg=None):
  arg = config_args.parse_arg(arg, variant='cub')
  variant = config_args.check_choice('variant', arg.variant, ('cub', 'coco', 'demo'))
  # SD-GAN's own widths and schedule are not in the reference: AttnGAN's
  # variant, with SD-GAN's fields added.
  c = config_base.load_config_file(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), 'attngan.py'), variant)
  c.method = 'sdgan'
  # SCBN level of the refinement stages: 'word' (per-pixel) or 'sentence'.
  c.model.refine_level = 'word'
  # Size of D's Siamese embedding (unit vectors).
  c.model.siamese_dim = 256
  c.loss.update(
      contrastive_margin=1.0,    # negatives pushed to d >= margin
      contrastive_floor=0.1,     # positives pulled only down to d = floor
      contrastive_weight_g=1.0,  # on generated pairs, per stage, in G's loss
      contrastive_weight_d=1.0)  # on real pairs, per stage, in D's loss
  return c
