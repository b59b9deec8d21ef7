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
  return _image_nll(jnp.take_along_axis(log_probs, target, axis=-1)[..., 0])


def _image_nll(picked: jax.Array) -> jax.Array:
  """Per-sub-pixel log-probabilities (B, ...) -> per-image NLL (B,)."""
  return -jnp.sum(picked.reshape(picked.shape[0], -1), axis=1)


def bits_per_dim(nll: jax.Array, num_dims: int) -> jax.Array:
  """NLL in nats (per image) -> bits per sub-pixel."""
  return nll / (num_dims * math.log(2.0))


def image_bits_per_dim(logits: jax.Array, image: jax.Array) -> jax.Array:
  """Per-image bits/dim of `image` under `logits`."""
  return bits_per_dim(nll_nats(logits, image), math.prod(image.shape[1:]))


@jax.custom_vjp
def dense_log_prob(features: jax.Array, kernel: jax.Array, bias: jax.Array,
                   image: jax.Array) -> jax.Array:
  """Per-sub-pixel log-probabilities of `image` under a final dense layer's softmaxes.

  features (..., F) float32, kernel (F, C * 256), bias (C * 256,), image (..., C)
  ints -> (..., C): log softmax(features @ kernel + bias)[..., c, image[..., c]].
  Equal to nll_nats on the dense layer's logits, with a hand-written gradient:
  left to autodiff, XLA:CPU recomputed the exponentials of all the logits in
  three fusions and laid the kernel's gradient out transposed (~40% of the
  PixelCNN's train step at the demo size); here the logits' gradient is formed
  once and feeds three plain matmuls.
  """
  return _dense_log_prob_fwd(features, kernel, bias, image)[0]


def _dense_log_prob_fwd(features, kernel, bias, image):
  logits = features @ kernel + bias
  logits = logits.reshape(*logits.shape[:-1], image.shape[-1], -1)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, image[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked - lse, (features, kernel, logits, lse, image)


def _dense_log_prob_bwd(residuals, g):
  features, kernel, logits, lse, image = residuals
  probs = jnp.exp(logits - lse[..., None])
  onehot = jax.nn.one_hot(image, logits.shape[-1], dtype=logits.dtype)
  # The barriers keep XLA from fusing (recomputing) the gradient into each of its
  # three consumers and from transposing it for the kernel's.
  d_logits = jax.lax.optimization_barrier(
      (g[..., None] * (onehot - probs)).reshape(-1, kernel.shape[-1]))
  flat = jax.lax.optimization_barrier(features.reshape(-1, features.shape[-1]).T)
  d_features = (d_logits @ kernel.T).reshape(features.shape)
  return d_features, flat @ d_logits, jnp.sum(d_logits, axis=0), None


dense_log_prob.defvjp(_dense_log_prob_fwd, _dense_log_prob_bwd)


def dense_bits_per_dim(features: jax.Array, kernel: jax.Array, bias: jax.Array,
                       image: jax.Array) -> jax.Array:
  """Per-image bits/dim of `image` (B, H, W, C) under dense_log_prob's softmaxes."""
  nll = _image_nll(dense_log_prob(features, kernel, bias, image))
  return bits_per_dim(nll, math.prod(image.shape[1:]))
