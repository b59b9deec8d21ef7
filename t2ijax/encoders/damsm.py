"""DAMSM text and image encoders (AttnGAN's RNN_ENCODER and CNN_ENCODER).

Both map into one joint space of `nef` (256) features so that words can be
matched to image regions and sentences to whole images (see
`t2ijax/losses/damsm.py`). Layouts are NHWC / (batch, time, features); the
official code is NCHW / (batch, features, time).

Parameter paths (stable, for `t2ijax/convert/torch_damsm.py`):
  TextEncoder:  encoder/embedding, rnn_fwd/cell/{ii,if,ig,io,hi,hf,hg,ho},
                rnn_bwd/cell/... (flax `LSTMCell` layout).
  ImageEncoder: backbone/... (Inception-v3 with torchvision names, or the tiny
                CNN), emb_features/kernel (1x1 conv, no bias),
                emb_cnn_code/{kernel,bias}.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

BACKBONES = ('inception_v3', 'tiny')

# The official heads and word embedding draw from U(-0.1, 0.1).
_INIT_RANGE = 0.1
# torch BatchNorm2d(eps=1e-5, momentum=0.1); flax weights the old value.
_BN_EPSILON = 1e-5
_BN_MOMENTUM = 0.9
# DAMSM's Inception sees 299x299 images.
_INCEPTION_SIZE = 299


def _uniform(limit: float) -> nn.initializers.Initializer:
  """U(-limit, limit), the init torch uses for Embedding/LSTM/Linear."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


def _summed_uniform(limit: float) -> nn.initializers.Initializer:
  """Sum of two U(-limit, limit) draws.

  torch's LSTM has two biases (b_ih, b_hh), each U(-1/sqrt(H), 1/sqrt(H));
  flax's LSTMCell has one bias per gate that plays the role of their sum.
  """

  def init(key, shape, dtype=jnp.float32):
    key_ih, key_hh = jax.random.split(key)
    return (jax.random.uniform(key_ih, shape, dtype, -limit, limit)
            + jax.random.uniform(key_hh, shape, dtype, -limit, limit))

  return init


def _torch_lstm_cell(hidden: int) -> nn.LSTMCell:
  """A flax LSTMCell initialised like torch.nn.LSTM (all U(+-1/sqrt(H)))."""
  limit = 1.0 / math.sqrt(hidden)
  return nn.LSTMCell(
      hidden,
      kernel_init=_uniform(limit),
      recurrent_kernel_init=_uniform(limit),
      bias_init=_summed_uniform(limit))


class TextEncoder(nn.Module):
  """Bidirectional LSTM caption encoder (official RNN_ENCODER).

  Embed(n_words, embedding_dim) -> Dropout -> one-layer BiLSTM with nef // 2
  units per direction, with the semantics of a packed sequence: each caption
  is read only up to its length, the backward direction starts at its last
  real token, and outputs at padded steps are exactly zero. The batch does not
  need to be sorted by length (the official code sorted it because packing
  required it; sort anyway where the order matters downstream, e.g. for the
  AttnGAN attention-mask bug).

  Attributes:
    n_words: vocabulary size (CUB 5450, COCO 27297).
    embedding_dim: word embedding size (300 official).
    nef: size of the joint space; words and sentence have nef features.
    dropout_rate: dropout on the embeddings, active when not deterministic
      (official 0.5, used only in DAMSM pretraining).
  """
  n_words: int
  embedding_dim: int = 300
  nef: int = 256
  dropout_rate: float = 0.5

  def setup(self):
    if self.nef % 2:
      raise ValueError(
          f'nef must be even (two LSTM directions); got {self.nef}.')
    hidden = self.nef // 2
    self.encoder = nn.Embed(
        self.n_words, self.embedding_dim, embedding_init=_uniform(_INIT_RANGE))
    self.drop = nn.Dropout(self.dropout_rate)
    # Cells built here are adopted by their RNN: params at rnn_fwd/cell/...
    self.rnn_fwd = nn.RNN(_torch_lstm_cell(hidden), return_carry=True)
    self.rnn_bwd = nn.RNN(
        _torch_lstm_cell(hidden), return_carry=True, reverse=True,
        keep_order=True)

  def __call__(self, captions: jax.Array, lengths: jax.Array, *,
               deterministic: bool = True) -> dict[str, jax.Array]:
    """Encodes a batch of padded captions.

    Args:
      captions: (B, T) int word ids, 0-padded after each caption.
      lengths: (B,) int caption lengths, each in [1, T]. A length of 0 is
        not supported (packing rejects it too).
      deterministic: False applies dropout (needs a 'dropout' rng).

    Returns:
      {'words': (B, T, nef) per-step [forward h, backward h], zero at steps
         t >= length (the official (B, nef, T) output transposed, with T =
         the input's padded length rather than max(lengths)),
       'sentence': (B, nef) [forward h at length - 1, backward h at 0]}.
    """
    if captions.ndim != 2:
      raise ValueError(f'captions must be (B, T); got {captions.shape}.')
    lengths = jnp.asarray(lengths, jnp.int32)
    embedded = self.drop(self.encoder(captions), deterministic=deterministic)

    (_, fwd_last), fwd = self.rnn_fwd(embedded, seq_lengths=lengths)
    # The reversed RNN flips each caption within its own length, so its
    # final carry is the state after reading token 0.
    (_, bwd_last), bwd = self.rnn_bwd(embedded, seq_lengths=lengths)

    # flax runs the cells over the padding too (it only picks each caption's
    # carry at its last real step); a packed sequence yields zeros there, and
    # consumers rely on it.
    steps = jnp.arange(captions.shape[1])
    valid = (steps[None, :] < lengths[:, None])[..., None]
    words = jnp.where(valid, jnp.concatenate([fwd, bwd], axis=-1), 0.0)
    sentence = jnp.concatenate([fwd_last, bwd_last], axis=-1)
    return {'words': words, 'sentence': sentence}


class TinyBackbone(nn.Module):
  """A small CNN standing in for Inception-v3 in CPU demos (NOT official).

  Four stride-2 stages of conv3x3 (no bias) -> BatchNorm -> ReLU with width,
  2x, 4x and 8x width channels. Local features are the third stage (input / 8:
  8x8 regions at 64x64), global features the spatial mean of the fourth
  (8 * width). It plays Mixed_6e / pool3's roles, nothing more.

  Attributes:
    width: channels of the first stage.
  """
  width: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    features = {}
    for stage in range(1, 5):
      x = nn.Conv(self.width * 2**(stage - 1), (3, 3), strides=2,
                  padding='SAME', use_bias=False, name=f'stage{stage}_conv')(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                       epsilon=_BN_EPSILON, name=f'stage{stage}_bn')(x)
      x = nn.relu(x)
      if stage == 3:
        features['local'] = x
    features['global'] = jnp.mean(x, axis=(1, 2))
    return features


class ImageEncoder(nn.Module):
  """DAMSM image encoder (official CNN_ENCODER): regions and a global code.

  backbone 'inception_v3': images in [-1, 1] (no ImageNet mean/std) are
  resized to 299x299 with align_corners=True; local features = Mixed_6e
  (17x17x768), global = the 2048-d average pool after Mixed_7c.
  backbone 'tiny': `TinyBackbone`, our CPU-demo substitute; no resize.

  Heads (the only trainable part officially): `emb_features`, a bias-free 1x1
  conv to nef, on the local features; `emb_cnn_code`, a Dense to nef, on the
  global features. Kernels U(-0.1, 0.1); bias torch Linear's default
  U(+-1/sqrt(fan_in)).

  Attributes:
    backbone: 'inception_v3' or 'tiny'.
    nef: joint-space size (256).
    backbone_trainable: False (official) stops gradients at the backbone
      features. The backbone parameters still sit in 'params'; keep them out
      of the optimizer (e.g. optax.masked) so weight decay cannot move them.
    backbone_bn_train: with a frozen backbone and train=True, whether its
      BatchNorm uses batch statistics and updates its running averages. The
      official pretraining called `.train()` on the frozen Inception, so its
      running statistics drifted: True reproduces that (apply with
      mutable=['batch_stats']); False keeps the backbone exactly fixed. A
      trainable backbone always follows `train`.
    tiny_width: first-stage width of the tiny backbone.
  """
  backbone: str = 'inception_v3'
  nef: int = 256
  backbone_trainable: bool = False
  backbone_bn_train: bool = True
  tiny_width: int = 64

  @nn.compact
  def __call__(self, images: jax.Array,
               train: bool = False) -> dict[str, jax.Array]:
    """Encodes NHWC images.

    Args:
      images: (B, H, W, 3) in [-1, 1].
      train: training mode (BatchNorm statistics, see backbone_bn_train).

    Returns:
      {'local': (B, h, w, nef) region features (17x17 for Inception),
       'global': (B, nef) image code}.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'Expected NHWC RGB images; got {images.shape}.')
    backbone_train = train and (self.backbone_trainable or
                                self.backbone_bn_train)
    local, pooled = self._backbone_features(images, backbone_train)
    if not self.backbone_trainable:
      local = jax.lax.stop_gradient(local)
      pooled = jax.lax.stop_gradient(pooled)

    local = nn.Conv(self.nef, (1, 1), use_bias=False,
                    kernel_init=_uniform(_INIT_RANGE),
                    name='emb_features')(local)
    code = nn.Dense(self.nef, kernel_init=_uniform(_INIT_RANGE),
                    bias_init=_uniform(1.0 / math.sqrt(pooled.shape[-1])),
                    name='emb_cnn_code')(pooled)
    return {'local': local, 'global': code}

  def _backbone_features(self, images: jax.Array,
                         train: bool) -> tuple[jax.Array, jax.Array]:
    if self.backbone == 'inception_v3':
      # Imported here so this module loads without the Inception code.
      from t2ijax.encoders import inception  # pylint: disable=g-import-not-at-top
      if images.shape[1:3] != (_INCEPTION_SIZE, _INCEPTION_SIZE):
        images = inception.resize_bilinear_align_corners(images,
                                                         _INCEPTION_SIZE)
      out = inception.InceptionV3(flavor='torchvision', num_classes=None,
                                  name='backbone')(images, train)
      return out['mixed_6e'], out['pool3']
    if self.backbone == 'tiny':
      out = TinyBackbone(self.tiny_width, name='backbone')(images, train)
      return out['local'], out['global']
    raise ValueError(
        f'Unknown DAMSM backbone {self.backbone!r}; use one of {BACKBONES}.')
