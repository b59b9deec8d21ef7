"""Discrete likelihood of 8-bit images under a 256-way softmax per sub-pixel.

bits/dim = NLL in nats / (H * W * C * ln 2) (reference/pixelcnn_metrics.md A8):
the negative log-likelihood of an image summed over its D = H*W*C sub-pixels,
per dimension, in bits. Uniform logits give exactly log2(256) = 8.
"""

import math

import jax
import jax.numpy as jnp


def nll_nats(logits: jax.Array, image: jax.Array) -> jax.Array:
  """Per-image NLL in nats: logits (B, H, W, C, 256), image (B, H, W, C) ints."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  target = image.astype(jnp.int32)[..., None]
  picked = jnp.take_along_axis(log_probs, target, axis=-1)[..., 0]
  return -jnp.sum(picked.reshape(picked.shape[0], -1), axis=1)


def bits_per_dim(nll: jax.Array, num_dims: int) -> jax.Array:
  """NLL in nats (per image) -> bits per sub-pixel."""
  return nll / (num_dims * math.log(2.0))


def image_bits_per_dim(logits: jax.Array, image: jax.Array) -> jax.Array:
  """Per-image bits/dim of `image` under `logits`."""
  return bits_per_dim(nll_nats(logits, image), math.prod(image.shape[1:]))
