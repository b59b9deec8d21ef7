"""Pixel-to-word attention of the AttnGAN generators (GlobalAttentionGeneral).

Each pixel q of an image feature map takes a softmax over the words t of its
caption of logits h_q . k_t and reads sum_t a_{q,t} v_t. AttnGAN uses
k = v = the projected words; DM-GAN's memory uses separate keys and values
(see `attend`).

Word masks are True at real words (the official mask is `captions == 0`,
True at padding).

The official padding-mask bug (AttnGAN, DM-GAN, MirrorGAN; AttnGAN issue
#93): the (B, T) mask is tiled to (B * N, T) with `repeat(N, 1)`, so row
r = b * N + q (image b, pixel q) is masked with caption r mod B's padding
instead of caption b's. `official_mask_bug=True` reproduces it, as the
released checkpoints were trained with it:

  mask_used[b, q, t] = word_mask[(b * N + q) mod B, t],  q = y * W + x.

It depends on the batch size and order (official batches are sorted by length,
longest first). A padded word left unmasked by the bug keeps whatever logit
its features give: 0 for the DAMSM encoder's zero padding through a bias-free
projection, as officially. Padding columns beyond every caption's length are
masked for every row either way, so padding T beyond max(lengths) changes
nothing. Default (False): each caption's own mask.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.nn import layers


def word_mask_from_lengths(lengths: jax.Array, num_words: int) -> jax.Array:
  """(B, num_words) bool, True at positions t < lengths[b]."""
  return jnp.arange(num_words)[None, :] < jnp.asarray(lengths)[:, None]


def query_word_mask(word_mask: jax.Array, num_queries: int,
                    official_mask_bug: bool = False) -> jax.Array:
  """The mask each query uses: (B, N, T) with the bug, else (B, 1, T).

  Args:
    word_mask: (B, T) bool, True at real words.
    num_queries: N, the number of pixels per image (H * W).
    official_mask_bug: reproduce the official row mix-up (module docstring).
  """
  word_mask = jnp.asarray(word_mask)
  if not official_mask_bug:
    return word_mask[:, None, :]
  batch = word_mask.shape[0]
  rows = (jnp.arange(batch)[:, None] * num_queries
          + jnp.arange(num_queries)[None, :]) % batch
  return word_mask[rows]


def attend(queries: jax.Array, keys: jax.Array, values: jax.Array,
           word_mask: Optional[jax.Array] = None,
           official_mask_bug: bool = False) -> tuple[jax.Array, jax.Array]:
  """Masked softmax attention of queries over words.

  Masked words get logit -inf, hence weight exactly 0 and zero gradient.
  Every row must keep at least one word (every caption has length >= 1).

  Args:
    queries: (B, N, D) one query per pixel.
    keys: (B, T, D).
    values: (B, T, Dv).
    word_mask: (B, T) bool, True at real words; None: all real.
    official_mask_bug: mask with the official row mix-up (module docstring).

  Returns:
    read: (B, N, Dv) sum_t a_{q,t} values_t; weights: (B, N, T) a_{q,t}.
  """
  logits = jnp.einsum('bnd,btd->bnt', queries, keys)
  if word_mask is not None:
    mask = query_word_mask(word_mask, queries.shape[1], official_mask_bug)
    logits = jnp.where(mask, logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum('bnt,btd->bnd', weights, values), weights


class WordAttention(nn.Module):
  """GlobalAttentionGeneral: each pixel reads a context vector from the words.

  Words are projected to the image's channels by `conv_context` (torch: a
  bias-free 1x1 Conv2d nef -> C; here a Dense with kernel = torch
  weight[:, :, 0, 0].T), which serve as keys and values.

  Attributes:
    official_mask_bug: reproduce the official padding-mask bug (module
      docstring); False masks each caption with its own padding.
  """
  official_mask_bug: bool = False

  @nn.compact
  def __call__(
      self, image_features: jax.Array, words: jax.Array,
      word_mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Attends from every pixel over the words.

    Args:
      image_features: (B, H, W, C) queries h.
      words: (B, T, nef) word features (zero at padding from the encoder).
      word_mask: (B, T) bool, True at real words; None: all real.

    Returns:
      context: (B, H, W, C); attention: (B, H, W, T) word weights per pixel
      (the official (B, T, H, W) maps, channels last).
    """
    batch, height, width, channels = image_features.shape
    projected = nn.Dense(channels, use_bias=False,
                         kernel_init=layers.orthogonal_init(),
                         name='conv_context')(words)
    queries = image_features.reshape(batch, height * width, channels)
    context, weights = attend(queries, projected, projected, word_mask,
                              self.official_mask_bug)
    return (context.reshape(batch, height, width, channels),
            weights.reshape(batch, height, width, words.shape[1]))
