"""STREAM pretraining (MirrorGAN's image captioner) on a data set's captions.

Variants (reference/attngan_family.md §5.3; MirrorGAN points to the yunjey
pytorch-tutorial captioner and did not publish its own settings):
  cub   (default) frozen ImageNet ResNet-152 (torchvision weights in
        model.resnet_weights) + linear/BN to 256, LSTM 512, Adam 1e-3,
        batch 128, 5 epochs, at 256x256 (resized to 224 inside), 10 captions
        of at most 18 words (the MirrorGAN CUB config's).
  coco  as cub with 5 captions of at most 12 words.
  demo  the built-in shapes data at 128x128 with a small trainable CNN
        instead of ResNet-152, features 128, LSTM 256: minutes on a CPU.

  python -m t2ijax.main --config=configs/stream.py:demo --workdir=runs/stream_demo
  python -m t2ijax.main --config=configs/stream.py --workdir=runs/stream_cub \
      --config.data.manual_dir=DATA/birds \
      --config.model.resnet_weights=PATH/resnet152-394f9c45.pth

MirrorGAN (configs/mirrorgan.py) then takes --config.stream.workdir=runs/stream_cub.
"""

import ml_collections

from t2ijax import config_args
from t2ijax import config_base


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, variant="cub")
  variant = config_args.check_choice("variant", arg.variant, ("cub", "coco", "demo"))

  c = config_base.base_config("stream")
  c.data.source = "cub"
  # MirrorGAN captions its final (256x256) images, so STREAM learns at that size.
  c.data.image_sizes = (256,)
  c.data.max_words = 18
  c.data.captions_per_image = 10
  c.train.batch_size = 128
  c.train.num_epochs = 5
  c.checkpoint.every_steps = 1000
  c.model = ml_collections.ConfigDict(dict(
      n_words=-1,              # -1: size of the data set's vocabulary
      embed_size=256,          # image feature and word embedding size
      hidden_size=512,         # LSTM units (MirrorGAN: 2 * CAP.hidden_size)
      backbone="resnet152",    # resnet152 (official, frozen) | tiny (demo)
      # torchvision's ImageNet resnet152-*.pth: required for resnet152.
      resnet_weights="",
      tiny_width=32,           # channels of the first 'tiny' stage
  ))
  c.optim = ml_collections.ConfigDict(dict(lr=1e-3, b1=0.9, b2=0.999))
  c.eval.batch_size = 100

  if variant == "coco":
    config_base.use_coco(c, max_words=12)
  elif variant == "demo":
    c.data.source = "shapes"
    c.data.image_sizes = (128,)
    c.data.shapes.update(num_train=4000, num_test=1000, image_size=128)
    # The captions say left/right/top/bottom: no flips or random crops.
    config_base.keep_positions(c.data)
    c.model.update(backbone="tiny", embed_size=128, hidden_size=256)
    c.train.batch_size = 32
    c.train.num_epochs = -1
    c.train.num_steps = 400
    c.checkpoint.every_steps = 200
    c.log.update(every_steps=25, sample_every_steps=-1)
    c.eval.update(batch_size=50, num_batches=5)
  return c
