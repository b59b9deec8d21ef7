"""DAMSM pretraining (AttnGAN's text and image encoders).

Variants:
  cub   (default) paper settings: Inception-v3 image encoder at 299x299, batch 48,
        10 captions of at most 18 words, Adam 0.002 (0.5, 0.999) reset every
        epoch with lr *= 0.98 per epoch down to 0.0002, text grad-norm clip 0.25,
        gamma 4/5/10, 600 epochs (the released encoder is epoch 200).
  coco  as cub with 5 captions of at most 15 words (released: epoch 100).
  demo  the built-in `shapes` data at 64x64 with a small CNN instead of
        Inception-v3, a few minutes on a laptop CPU.

  python -m t2ijax.main --config=configs/damsm.py:demo --workdir=runs/damsm_demo
"""

import ml_collections

from t2ijax import config_args
from t2ijax import config_base


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, variant="cub")
  variant = config_args.check_choice("variant", arg.variant, ("cub", "coco", "demo"))

  c = config_base.base_config("damsm")
  c.data.image_sizes = (299,)
  c.data.max_words = 18
  c.data.captions_per_image = 10
  c.train.batch_size = 48
  c.train.num_epochs = 600
  c.checkpoint.every_steps = 2000

  c.model = ml_collections.ConfigDict(dict(
      n_words=-1,                 # -1: size of the data set's vocabulary
      embedding_dim=300,          # word embedding fed to the BiLSTM
      nef=256,                    # joint space; BiLSTM hidden = nef / 2 per direction
      text_dropout=0.5,
      backbone="inception_v3",    # inception_v3 | tiny
      # torchvision's ImageNet Inception-v3 state dict (inception_v3_google-*.pth),
      # or a DAMSM image_encoder*.pth: required for the inception_v3 backbone
      # unless backbone_trainable (training Inception from scratch).
      inception_weights="",
      backbone_trainable=False,
      # The official code left Inception's BatchNorm in train mode, so its
      # running statistics drift during pretraining although its weights are frozen.
      backbone_bn_train=True,
      tiny_width=64,              # channels of the first 'tiny' stage
  ))
  c.damsm = ml_collections.ConfigDict(dict(gamma1=4.0, gamma2=5.0, gamma3=10.0))
  c.optim = ml_collections.ConfigDict(dict(
      lr=0.002, b1=0.5, b2=0.999,
      lr_decay_per_epoch=0.98,
      min_lr_factor=0.1,          # decay stops once lr < lr * min_lr_factor
      reset_each_epoch=True,      # the official code builds a new Adam every epoch
      text_grad_clip=0.25))
  c.eval.batch_size = 100         # retrieval among 100 candidates, as R-precision

  if variant == "cub":
    c.data.source = "cub"
  elif variant == "coco":
    config_base.use_coco(c, max_words=15)
    c.train.num_epochs = 600
  elif variant == "demo":
    c.data.source = "shapes"
    config_base.keep_positions(c.data)
    c.data.image_sizes = (64,)
    c.data.shapes.num_train = 4000
    c.data.shapes.num_test = 1000
    c.data.shapes.image_size = 64
    c.model.backbone = "tiny"
    c.model.backbone_trainable = True
    c.model.tiny_width = 32
    # The word-level loss scores every caption against every image, so its cost
    # grows with the square of the batch: 32 keeps a CPU step near 0.3 s.
    c.train.batch_size = 32
    c.train.num_epochs = -1
    c.train.num_steps = 800
    c.optim.lr_decay_per_epoch = 1.0
    c.optim.reset_each_epoch = False
    c.checkpoint.every_steps = 200
    c.log.every_steps = 25
    c.log.sample_every_steps = 200
    c.eval.num_batches = 5
  return c
