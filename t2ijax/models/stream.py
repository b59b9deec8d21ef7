"""MirrorGAN's STREAM: an image captioner (CNN encoder + LSTM decoder), NHWC.

Official (reference/attngan_family.md §5.3; the yunjey pytorch-tutorial
captioner): CAPTION_CNN = frozen ImageNet ResNet-152 without its fc, then
`linear` (2048 -> 256) and `bn` (BatchNorm1d, momentum 0.01); CAPTION_RNN =
`embed` (n_words -> 256), one-layer `lstm` (256 -> 512), `linear`
(512 -> n_words). Teacher forcing feeds [image feature, w_1, ..., w_{L-1}]
and scores the outputs against w_1 .. w_L with a cross-entropy averaged over
the batch's real tokens (`caption_loss`). Captions are the data set's (DAMSM)
word ids: no start or end tokens, 0 pads.

Backbones:
  'resnet152'  the official one, torchvision layout (Bottleneck v1.5, stride
               on the 3x3), frozen, BatchNorm always in inference mode. Load
               torchvision's ImageNet weights with
               `resnet_variables_from_state_dict`.
  'tiny'       `t2ijax.encoders.damsm.TinyBackbone`, trained with the heads:
               our CPU-demo substitute, NOT official.

Images come in [-1, 1] (the generator's range), in pretraining as in
MirrorGAN. For the ResNet they are mapped to ImageNet mean/std inside, so the
captioner sees the statistics it was pretrained with. (The official code
pretrained STREAM on ImageNet-normalised real images but fed it raw [-1, 1]
generated images; we do not reproduce that mismatch.) The ResNet also
resizes to 224x224 first (bilinear, half-pixel; UNVERIFIED which alignment
the official run had).

Parameter paths (torch key -> flax path):
  encoder resnet.0 / resnet.1 [BN]      backbone/conv1, backbone/bn1
  encoder resnet.{4..7}.{j}.*           backbone/layer{1..4}_{j}/{conv1,bn1,
                                        conv2,bn2,conv3,bn3,downsample_conv,
                                        downsample_bn} (downsample.0 / .1)
  encoder linear / bn [BN]              linear, bn
  decoder embed / linear                embed, linear
  decoder lstm                          lstm/cell/{ii,if,ig,io,hi,hf,hg,ho}
                                        (flax LSTMCell; bias = b_ih + b_hh)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.encoders import damsm as damsm_enc

BACKBONES = ('resnet152', 'tiny')
# torchvision ResNet-152: Bottleneck blocks per layer, and their widths.
RESNET152_BLOCKS = (3, 8, 36, 3)
RESNET_WIDTHS = (64, 128, 256, 512)
RESNET_EXPANSION = 4
RESNET_INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torch BatchNorm2d defaults (the ResNet), and STREAM's BatchNorm1d(momentum
# 0.01): flax weights the old value.
_BN_EPSILON = 1e-5
_BN2D_MOMENTUM = 0.9
_BN1D_MOMENTUM = 0.99
# The tutorial draws the decoder's embedding and output kernel from U(-0.1, 0.1).
_INIT_RANGE = 0.1


def _frozen_bn(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, momentum=_BN2D_MOMENTUM,
                      epsilon=_BN_EPSILON, name=name)


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
  # torch pads k // 2 on each side; explicit so stride 2 matches torch.
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=stride,
                 padding=((pad, pad), (pad, pad)), use_bias=False, name=name)


class Bottleneck(nn.Module):
  """torchvision Bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (4x), plus shortcut."""
  width: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_features = self.width * RESNET_EXPANSION
    y = nn.relu(_frozen_bn('bn1')(_conv(self.width, 1, 1, 'conv1')(x)))
    y = nn.relu(_frozen_bn('bn2')(_conv(self.width, 3, self.stride, 'conv2')(y)))
    y = _frozen_bn('bn3')(_conv(out_features, 1, 1, 'conv3')(y))
    if self.stride != 1 or x.shape[-1] != out_features:
      x = _frozen_bn('downsample_bn')(
          _conv(out_features, 1, self.stride, 'downsample_conv')(x))
    return nn.relu(x + y)


class ResNet152(nn.Module):
  """torchvision ResNet-152 up to the global average pool: (B, 2048).

  Always in inference mode (running BN statistics): STREAM keeps it frozen.
  Input: ImageNet-normalised (B, H, W, 3).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(_frozen_bn('bn1')(_conv(64, 7, 2, 'conv1')(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for layer, (blocks, width) in enumerate(
        zip(RESNET152_BLOCKS, RESNET_WIDTHS), start=1):
      for j in range(blocks):
        stride = 2 if (j == 0 and layer > 1) else 1
        x = Bottleneck(width, stride, name=f'layer{layer}_{j}')(x)
    return jnp.mean(x, axis=(1, 2))


class CaptionEncoder(nn.Module):
  """CAPTION_CNN: (B, S, S, 3) images in [-1, 1] -> (B, embed_size).

  Attributes:
    embed_size: feature size (256).
    backbone: 'resnet152' (official, frozen) or 'tiny' (trainable).
    tiny_width: first-stage width of the tiny backbone.
  """
  embed_size: int = 256
  backbone: str = 'resnet152'
  tiny_width: int = 32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """Encodes images; train=True uses batch statistics in `bn` (and the tiny
    backbone) and needs mutable=['batch_stats']."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images must be (B, H, W, 3); got {images.shape}.')
    if self.backbone == 'resnet152':
      x = jax.image.resize(
          images, (images.shape[0], RESNET_INPUT_SIZE, RESNET_INPUT_SIZE, 3),
          'bilinear')
      x = ((x + 1.0) / 2.0 - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
      # Frozen, as officially (requires_grad False on the ResNet).
      x = jax.lax.stop_gradient(ResNet152(name='backbone')(x))
    elif self.backbone == 'tiny':
      x = damsm_enc.TinyBackbone(self.tiny_width, name='backbone')(
          images, train)['global']
    else:
      raise ValueError(f'backbone must be one of {BACKBONES}; got '
                       f'{self.backbone!r}.')
    # The tutorial's EncoderCNN init: linear N(0, 0.02), bias 0.
    x = nn.Dense(self.embed_size,
                 kernel_init=nn.initializers.normal(0.02),
                 bias_init=nn.initializers.zeros, name='linear')(x)
    return nn.BatchNorm(use_running_average=not train, momentum=_BN1D_MOMENTUM,
                        epsilon=_BN_EPSILON, name='bn')(x)


class CaptionDecoder(nn.Module):
  """CAPTION_RNN: teacher-forced next-word logits from an image feature.

  Attributes:
    n_words: vocabulary size (the output classes; id 0 is padding).
    embed_size: word embedding size (256), = the image feature size.
    hidden_size: LSTM units (MirrorGAN builds 2 * CAP.hidden_size = 512).
  """
  n_words: int
  embed_size: int = 256
  hidden_size: int = 512

  def setup(self):
    uniform = damsm_enc._uniform(_INIT_RANGE)  # pylint: disable=protected-access
    self.embed = nn.Embed(self.n_words, self.embed_size,
                          embedding_init=uniform)
    self.lstm = nn.RNN(damsm_enc._torch_lstm_cell(self.hidden_size))  # pylint: disable=protected-access
    self.linear = nn.Dense(self.n_words, kernel_init=uniform,
                           bias_init=nn.initializers.zeros)

  def __call__(self, features: jax.Array, captions: jax.Array) -> jax.Array:
    """Logits (B, T, n_words); step t predicts captions[:, t].

    The LSTM reads [features, embed(captions[:, 0]), ..., embed(captions[:,
    T-2])]; a packed sequence stops each caption at its length, and since the
    LSTM is causal the outputs before that are the same: mask the loss with
    the lengths (`caption_loss`).

    Args:
      features: (B, embed_size) from `CaptionEncoder`.
      captions: (B, T) int word ids, 0-padded.
    """
    if features.shape != (captions.shape[0], self.embed_size):
      raise ValueError(f'features must be ({captions.shape[0]}, '
                       f'{self.embed_size}); got {features.shape}.')
    inputs = jnp.concatenate(
        [features[:, None, :], self.embed(captions[:, :-1])], axis=1)
    return self.linear(self.lstm(inputs))

  def greedy(self, features: jax.Array, num_steps: int) -> jax.Array:
    """(B, num_steps) word ids, each the argmax given the previous ones."""
    cell = self.lstm.cell
    carry = cell.initialize_carry(jax.random.key(0), features.shape)
    ids = []
    x = features
    for _ in range(num_steps):
      carry, h = cell(carry, x)
      word = jnp.argmax(self.linear(h), axis=-1)
      ids.append(word)
      x = self.embed(word)
    return jnp.stack(ids, axis=1)


def caption_loss(logits: jax.Array, captions: jax.Array,
                 lengths: jax.Array) -> dict[str, jax.Array]:
  """Cross-entropy of the real tokens, averaged over all of them in the batch.

  Args:
    logits: (B, T, V) from `CaptionDecoder`.
    captions: (B, T) int targets.
    lengths: (B,) caption lengths; steps t >= length are ignored.

  Returns:
    {'loss': mean CE over real tokens, 'token_accuracy': fraction of real
     tokens whose argmax is right}.
  """
  mask = jnp.arange(captions.shape[1])[None, :] < jnp.asarray(lengths)[:, None]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, captions[..., None], axis=-1)[..., 0]
  count = jnp.maximum(jnp.sum(mask), 1)
  loss = -jnp.sum(jnp.where(mask, picked, 0.0)) / count
  correct = (jnp.argmax(logits, axis=-1) == captions) & mask
  return {'loss': loss, 'token_accuracy': jnp.sum(correct) / count}


def resnet_variables_from_state_dict(state_dict: dict) -> dict:
  """torchvision resnet152 (or STREAM `resnet.*`) state dict -> backbone vars.

  Accepts keys with torchvision names (`conv1.weight`, `layer1.0.conv1.weight`,
  ...) or the tutorial/MirrorGAN encoder's (`resnet.0.weight`,
  `resnet.4.0.conv1.weight`, ...); `fc.*` and `num_batches_tracked` are
  ignored.

  Returns:
    {'params': ..., 'batch_stats': ...} for `ResNet152` (numpy arrays).

  Raises:
    KeyError naming the first missing tensor.
  """
  renamed = {}
  top = {'0': 'conv1', '1': 'bn1', '4': 'layer1', '5': 'layer2',
         '6': 'layer3', '7': 'layer4'}
  for key, value in state_dict.items():
    if key.startswith('resnet.'):
      head, _, rest = key[len('resnet.'):].partition('.')
      if head not in top:
        continue
      key = f'{top[head]}.{rest}'
    renamed[key] = np.asarray(value)

  def take(key):
    if key not in renamed:
      raise KeyError(f'{key} is missing from the ResNet-152 state dict')
    return renamed[key]

  params, stats = {}, {}

  def conv(src, dst_scope, dst):
    params.setdefault(dst_scope, {})[dst] = {
        'kernel': take(f'{src}.weight').transpose(2, 3, 1, 0)}

  def bn(src, dst_scope, dst):
    params.setdefault(dst_scope, {})[dst] = {
        'scale': take(f'{src}.weight'), 'bias': take(f'{src}.bias')}
    stats.setdefault(dst_scope, {})[dst] = {
        'mean': take(f'{src}.running_mean'), 'var': take(f'{src}.running_var')}

  conv('conv1', None, 'conv1')
  bn('bn1', None, 'bn1')
  for layer, blocks in enumerate(RESNET152_BLOCKS, start=1):
    for j in range(blocks):
      src, dst = f'layer{layer}.{j}', f'layer{layer}_{j}'
      for k in (1, 2, 3):
        conv(f'{src}.conv{k}', dst, f'conv{k}')
        bn(f'{src}.bn{k}', dst, f'bn{k}')
      if j == 0:
        conv(f'{src}.downsample.0', dst, 'downsample_conv')
        bn(f'{src}.downsample.1', dst, 'downsample_bn')

  def flat(tree):
    out = dict(tree.pop(None, {}))
    out.update(tree)
    return out

  return {'params': flat(params), 'batch_stats': flat(stats)}

