"""The Gated (Conditional) PixelCNN and its conditioning networks.

  GatedPixelCnn    the decoder: image (B, H, W, 3) in [0, 255] (floats allowed, so
                   causality can be tested by gradients) -> logits (B, H, W, 3, 256);
                   sub-pixels in raster order, R -> G -> B within a pixel.
  SpatialFromVector  s = m(h): a deconvolution net from a vector to an (H, W, c) map.
  WordAttentionMap   per location, attention over a caption's word features, the
                   query being that location's feature of s (caption variant).
  Encoder          the PixelCNN auto-encoder's encoder (paper section 2.4): an
                   image -> an m-dimensional bottleneck.
  PixelCnnModel    conditioning inputs -> (global vector, spatial map) -> decoder.

Conditioning never reads the image being modelled (the auto-encoder's encoder
reads it, but its output is a fixed input of the decoder), so causality is a
property of the decoder alone.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.nn import gated_pixelcnn as gp

NUM_LEVELS = 256
CONDITIONS = ('none', 'class', 'caption', 'autoencoder')


def scale_input(x: jax.Array) -> jax.Array:
  """[0, 255] -> [-1, 1], differentiable (floats in, floats out).

  Computed in float32; the result is in x's dtype when x is floating (bfloat16
  under mixed precision, t2ijax/precision.py), else float32.
  """
  y = x.astype(jnp.float32) / 127.5 - 1.0
  return y.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else y


class GatedPixelCnn(nn.Module):
  """num_layers gated layers, skip connections summed into a masked 1x1 head."""
  num_layers: int = 8
  features: int = 48            # p per stack, divisible by 3
  kernel_size: int = 5          # n of layers 2.. (odd)
  first_kernel_size: int = 7    # n of layer 1 (mask A)
  skip_features: int = 48
  head_features: int = 96
  zero_init_conditioning: bool = True   # conditioning projections start at 0

  @nn.compact
  def __call__(self, x, global_cond=None, spatial_cond=None, logits: bool = True):
    """Logits (B, H, W, 3, 256); logits=False: the last layer's input instead
    (B, H, W, head_features), for likelihood.dense_log_prob (see head_kernel)."""
    x = scale_input(x)
    v = h = x
    skip = 0.0
    for i in range(self.num_layers):
      n = self.first_kernel_size if i == 0 else self.kernel_size
      v, h, s = gp.GatedLayer(self.features, n, self.skip_features, first=i == 0,
                              zero_init_conditioning=self.zero_init_conditioning,
                              name=f'layer_{i}')(v, h, global_cond, spatial_cond)
      skip = skip + s
    out = gp.masked_1x1(self.head_features, 'B', 'head_1')(nn.relu(skip))
    if not logits:
      return nn.relu(out)
    out = gp.masked_1x1(3 * NUM_LEVELS, 'B', 'head_2')(nn.relu(out))
    # Channel layout [R logits | G logits | B logits]: group c is logits of colour c.
    return out.reshape(*out.shape[:-1], 3, NUM_LEVELS)


def head_kernel(params) -> tuple[jax.Array, jax.Array]:
  """The last layer's masked (head_features, 3 * 256) kernel and its bias.

  With GatedPixelCnn(logits=False)'s output f, the logits are f @ kernel + bias.
  """
  head = params['decoder']['head_2']
  kernel = gp.masked_kernel(head['kernel'], 'B')
  return kernel.reshape(kernel.shape[-2:]), head['bias']


class SpatialFromVector(nn.Module):
  """h (B, d) -> s (B, size, size, features): Dense to a small map, then x2 deconvs."""
  features: int
  size: int

  @nn.compact
  def __call__(self, h):
    start = self.size
    while start > 4 and start % 2 == 0:   # the largest start <= 4 (or odd) that doubles up
      start //= 2
    s = nn.Dense(start * start * self.features, name='fc')(h)
    s = nn.relu(s.reshape(h.shape[0], start, start, self.features))
    i, side = 0, start
    while side < self.size:
      s = nn.relu(nn.ConvTranspose(self.features, (4, 4), (2, 2), padding='SAME',
                                   name=f'up_{i}')(s))
      i, side = i + 1, side * 2
    return s


class WordAttentionMap(nn.Module):
  """Per location, a softmax over the caption's words -> context concatenated to s."""
  features: int

  @nn.compact
  def __call__(self, s, words, mask):
    q = nn.Dense(self.features, name='query')(s)                  # (B, H, W, c)
    k = nn.Dense(self.features, name='key')(words)                # (B, T, c)
    val = nn.Dense(self.features, name='value')(words)
    scores = jnp.einsum('bhwc,btc->bhwt', q, k) / jnp.sqrt(self.features)
    scores = jnp.where(mask[:, None, None, :], scores, -1e9)
    # The softmax in float32 (its logits are bfloat16 under mixed precision).
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(val.dtype)
    context = jnp.einsum('bhwt,btc->bhwc', weights, val)
    return jnp.concatenate([s, context], axis=-1)


class Encoder(nn.Module):
  """Image (B, H, W, 3) in [0, 255] -> bottleneck (B, m): strided convs then Dense."""
  bottleneck: int
  width: int = 32
  num_down: int = 3

  @nn.compact
  def __call__(self, x):
    y = scale_input(x)
    for i in range(self.num_down):
      y = nn.relu(nn.Conv(self.width * 2 ** i, (4, 4), (2, 2), padding='SAME',
                          name=f'conv_{i}')(y))
    return nn.Dense(self.bottleneck, name='fc')(y.reshape(y.shape[0], -1))


class PixelCnnModel(nn.Module):
  """Conditioning (by `condition`) then the gated decoder.

  cond inputs by condition: 'class' {'vector': one-hot (B, d)}; 'caption'
  {'vector': sentence (B, d), 'words': (B, T, D), 'mask': (B, T)};
  'autoencoder' {'image': (B, H, W, 3)}; 'none' {}.
  """
  condition: str = 'none'
  image_size: int = 32
  num_layers: int = 8
  features: int = 48
  kernel_size: int = 5
  first_kernel_size: int = 7
  skip_features: int = 48
  head_features: int = 96
  spatial_features: int = 0       # > 0: also condition on s = m(h) (+ words)
  word_attention: bool = False    # caption: attend to words per location
  bottleneck: int = 32            # autoencoder: m
  encoder_width: int = 32
  zero_init_conditioning: bool = True   # starts as the unconditional model

  def setup(self):
    if self.condition not in CONDITIONS:
      raise ValueError(f'condition {self.condition!r} is not one of {CONDITIONS}')
    self.decoder = GatedPixelCnn(self.num_layers, self.features, self.kernel_size,
                                 self.first_kernel_size, self.skip_features,
                                 self.head_features, self.zero_init_conditioning)
    if self.condition == 'autoencoder':
      self.encoder = Encoder(self.bottleneck, self.encoder_width)
    if self.condition != 'none' and self.spatial_features > 0:
      self.spatial = SpatialFromVector(self.spatial_features, self.image_size)
      if self.condition == 'caption' and self.word_attention:
        self.words = WordAttentionMap(self.spatial_features)

  def conditioning(self, cond: dict):
    """(global vector (B, d) or None, spatial map (B, H, W, c) or None)."""
    if self.condition == 'none':
      return None, None
    if self.condition == 'autoencoder':
      g = self.encoder(cond['image'])
    else:
      g = cond['vector']
      if not jnp.issubdtype(g.dtype, jnp.floating):   # floats keep their dtype (bf16)
        g = g.astype(jnp.float32)
    s = None
    if self.spatial_features > 0:
      s = self.spatial(g)
      if self.condition == 'caption' and self.word_attention:
        s = self.words(s, cond['words'], cond['mask'])
    return g, s

  def decode(self, x, global_cond=None, spatial_cond=None, logits: bool = True):
    return self.decoder(x, global_cond, spatial_cond, logits)

  def __call__(self, x, cond: dict | None = None, logits: bool = True):
    g, s = self.conditioning(cond or {})
    return self.decode(x, g, s, logits)
