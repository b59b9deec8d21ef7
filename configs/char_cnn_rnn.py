"""char-CNN-RNN text encoder trained with the symmetric joint embedding loss (cvpr2016).

Variants (reference/stackgan_dfgan_family.md §2):
  cub   (default) HybridCNNLong with cnn_dim 512, a time-averaged GRU over 18
        steps, 1024-d embeddings (the encoder GAN-INT-CLS's CUB embeddings came
        from: lm_sje_nc4_cub_hybrid_gru18_a1_c512); RMSprop lr 0.0007, x0.98
        per epoch, batch 40, 200 epochs, 10 captions per image. Image side: a
        frozen ImageNet Inception-v3 at 299 px (model.inception_weights, the
        torchvision state dict) and a trained 1024-d projection, instead of the
        official precomputed GoogLeNet features.
  demo  the built-in shapes at 64 px, the small trainable CNN on the image
        side, batch 32, 400 steps.

  python -m t2ijax.main --config=configs/char_cnn_rnn.py:demo --workdir=runs/char_cnn_rnn_demo
  python -m t2ijax.main --config=configs/gan_int_cls.py:demo --workdir=runs/gan_int_cls_char \
      --config.text.kind=char_cnn_rnn --config.text.char_cnn_rnn_workdir=runs/char_cnn_rnn_demo
"""

import ml_collections

from t2ijax import config_args
from t2ijax import config_base


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, variant='cub')
  variant = config_args.check_choice('variant', arg.variant, ('cub', 'demo'))
  c = config_base.base_config('char_cnn_rnn')
  c.data.source = 'cub'
  c.data.image_sizes = (299,)
  c.data.captions_per_image = 10
  # Word ids are spelled back into characters (201 at most); 30 words keep
  # whole CUB captions.
  c.data.max_words = 30
  c.train.batch_size = 40
  c.train.num_epochs = 200
  c.checkpoint.every_steps = 2000
  c.model = ml_collections.ConfigDict(dict(
      emb_dim=1024, cnn_dim=512,
      rnn_type='gru',            # gru (FixedGRU) | rnn (FixedRNN, cvpr2016's HybridCNNLong)
      average=True,              # time-average the 18 hidden states (a1)
      dropout=0.0,
      backbone='inception_v3',   # inception_v3 | tiny (the image side)
      inception_weights='',      # torchvision inception_v3_google-*.pth for a frozen backbone
      backbone_trainable=False,
      backbone_bn_train=False,
      tiny_width=32))
  c.loss = ml_collections.ConfigDict(dict(symmetric=True))
  c.optim = ml_collections.ConfigDict(dict(
      lr=0.0007, rms_decay=0.99, eps=1e-8, lr_decay_per_epoch=0.98))
  c.eval.batch_size = 40
  if variant == 'demo':
    c.data.source = 'shapes'
    c.data.image_sizes = (64,)
    c.data.max_words = 18
    c.data.shapes.update(num_train=4000, num_test=1000, image_size=64)
    c.model.update(backbone='tiny', backbone_trainable=True)
    c.train.batch_size = 32
    c.train.num_epochs = -1
    c.train.num_steps = 400
    c.optim.lr_decay_per_epoch = 1.0
    c.checkpoint.every_steps = 200
    c.log.update(every_steps=25, sample_every_steps=-1)
    c.eval.update(batch_size=50, num_batches=5)
  return c
