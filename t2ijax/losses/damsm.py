"""DAMSM matching losses (AttnGAN `words_loss`, `sent_loss`, `func_attention`).

Pure functions of arrays. Rows of every score matrix are images j, columns
captions i, as in the official code: S[j, i] scores image j against caption i,
loss0 = CE(S, arange) lets each image pick its caption, loss1 = CE(S^T,
arange) each caption its image. Pairs (i != j) of the same class are removed
from both with -inf, as they are not true negatives.

The official word loss loops over captions and slices each to its length L_i;
here all captions run at once with a word mask, and padded words take part in
nothing (neither softmax over words, nor the sum over words), so the result is
the loop's. Gradients reaching padded word positions are exactly zero.
"""

from typing import Optional

import jax
import jax.numpy as jnp

# The official cosine clamps the product of the norms from below.
COSINE_EPS = 1e-8


def _norm(x: jax.Array, axis: int = -1) -> jax.Array:
  """L2 norm with gradient 0 at the zero vector (as torch.norm), not NaN."""
  squared = jnp.sum(x * x, axis=axis)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def cosine_similarity(a: jax.Array, b: jax.Array,
                      eps: float = COSINE_EPS) -> jax.Array:
  """a.b / max(|a| |b|, eps) over the last axis (official DAMSM cosine)."""
  return jnp.sum(a * b, axis=-1) / jnp.maximum(_norm(a) * _norm(b), eps)


def _masked_softmax(logits: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """Softmax over `axis` among entries where mask is True; others get 0."""
  logits = jnp.where(mask, logits, -jnp.inf)
  return jax.nn.softmax(logits, axis=axis)


def word_region_attention(
    words: jax.Array, regions: jax.Array, gamma1: float,
    word_mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Region context for each word (official `func_attention`, paper Eq. 8-9).

  For each region, a softmax over the words of its dot products with them;
  then, per word, a softmax over regions of gamma1 times those weights. The
  context of a word is the weighted sum of regions.

  Leading batch axes broadcast, so (1, B, L, D) words against (B, 1, N, D)
  regions scores every caption against every image without copying regions.

  Args:
    words: (..., L, D) word features.
    regions: (..., N, D) region features (N = h * w, row-major).
    gamma1: sharpness of the attention over regions (4.0 in shipped configs).
    word_mask: (..., L) bool, True for real words; None: all real. Padded
      words get no weight in the softmax over words, and zero attention and
      context rows in the outputs.

  Returns:
    context: (..., L, D); attn: (..., L, N), each real word's row sums to 1.
  """
  # (..., L, N): dot product of every word with every region.
  logits = jnp.matmul(words, jnp.swapaxes(regions, -1, -2))
  if word_mask is None:
    word_mask = jnp.ones(logits.shape[:-1], bool)
  word_mask = jnp.broadcast_to(word_mask, logits.shape[:-1])[..., None]
  over_words = _masked_softmax(logits, word_mask, axis=-2)
  attn = jax.nn.softmax(gamma1 * over_words, axis=-1)
  attn = jnp.where(word_mask, attn, 0.0)
  context = jnp.matmul(attn, regions)
  return context, attn


def word_level_scores(
    words: jax.Array, lengths: jax.Array, regions: jax.Array, gamma1: float,
    gamma2: float) -> tuple[jax.Array, jax.Array]:
  """R(j, i) = log sum_k exp(gamma2 * cos(w_ik, c_jik)) for all pairs.

  The paper's outer 1/gamma2 power is not applied, as in the official code.

  Args:
    words: (B_cap, T, D) word features, zero or not beyond each length.
    lengths: (B_cap,) caption lengths, each in [1, T].
    regions: (B_img, h, w, D) region features.
    gamma1, gamma2: attention and word-aggregation sharpness.

  Returns:
    scores: (B_img, B_cap) R(j, i).
    attn: (B_img, B_cap, T, h * w) attention of caption i's words over
      image j's regions, zero rows at padded words.
  """
  batch_img, height, width, dim = regions.shape
  lengths = jnp.asarray(lengths)
  word_mask = jnp.arange(words.shape[1])[None, :] < lengths[:, None]
  # Zeroing padded words up front means no later value depends on them.
  words = jnp.where(word_mask[..., None], words, 0.0)
  regions = regions.reshape(batch_img, height * width, dim)

  context, attn = word_region_attention(
      words[None], regions[:, None], gamma1, word_mask[None])
  cosine = cosine_similarity(words[None], context)  # (B_img, B_cap, T)
  scores = jax.nn.logsumexp(
      jnp.where(word_mask[None], gamma2 * cosine, -jnp.inf), axis=-1)
  return scores, attn


def _mask_same_class(scores: jax.Array,
                     class_ids: Optional[jax.Array]) -> jax.Array:
  """-inf at (j, i), i != j, where images j and captions i share a class."""
  if class_ids is None:
    return scores
  class_ids = jnp.asarray(class_ids)
  same_class = class_ids[:, None] == class_ids[None, :]
  off_diagonal = ~jnp.eye(scores.shape[0], dtype=bool)
  return jnp.where(same_class & off_diagonal, -jnp.inf, scores)


def _matching_cross_entropy(scores: jax.Array) -> jax.Array:
  """Mean CE of each row against the label on the diagonal (arange)."""
  return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(scores, axis=1)))


def _both_directions(scores: jax.Array) -> tuple[jax.Array, jax.Array]:
  return _matching_cross_entropy(scores), _matching_cross_entropy(scores.T)


def words_loss(
    words: jax.Array, lengths: jax.Array, regions: jax.Array,
    class_ids: Optional[jax.Array], gamma1: float, gamma2: float,
    gamma3: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """DAMSM word-level loss over a batch of matching (image i, caption i).

  Args:
    words: (B, T, D) text-encoder word features.
    lengths: (B,) caption lengths, each in [1, T].
    regions: (B, h, w, D) image-encoder local features.
    class_ids: (B,) class of each pair, or None for no same-class masking.
    gamma1, gamma2, gamma3: 4.0, 5.0, 10.0 in all shipped configs.

  Returns:
    loss0: image -> caption CE (mean over images).
    loss1: caption -> image CE (mean over captions).
    attn_maps: (B, T, h, w) attention of caption i's words over its own image
      i (the official list of (1, L_i, h, w) maps, zero-padded to T).
  """
  scores, attn = word_level_scores(words, lengths, regions, gamma1, gamma2)
  scores = _mask_same_class(gamma3 * scores, class_ids)
  loss0, loss1 = _both_directions(scores)
  batch, height, width, _ = regions.shape
  own = jnp.arange(batch)
  attn_maps = attn[own, own].reshape(batch, words.shape[1], height, width)
  return loss0, loss1, attn_maps


def _cosine_matrix(img_global: jax.Array, sentence: jax.Array) -> jax.Array:
  """(B_img, B_txt) cosines, norm product clamped at COSINE_EPS."""
  dots = img_global @ sentence.T
  norms = _norm(img_global)[:, None] * _norm(sentence)[None, :]
  return dots / jnp.maximum(norms, COSINE_EPS)


def sentence_loss(img_global: jax.Array, sentence: jax.Array,
                  class_ids: Optional[jax.Array],
                  gamma3: float) -> tuple[jax.Array, jax.Array]:
  """DAMSM sentence-level loss: S[j, i] = gamma3 * cos(image j, sentence i).

  Args:
    img_global: (B, D) image codes.
    sentence: (B, D) sentence features.
    class_ids: (B,) or None, as in `words_loss`.
    gamma3: 10.0 in the shipped configs.

  Returns:
    (loss0 image -> sentence, loss1 sentence -> image), means over the batch.
  """
  scores = _mask_same_class(gamma3 * _cosine_matrix(img_global, sentence),
                            class_ids)
  return _both_directions(scores)


def retrieval_top1(img_global: jax.Array,
                   sentence: jax.Array) -> dict[str, jax.Array]:
  """In-batch top-1 retrieval accuracy by cosine, for evaluation.

  Pair i (image i, sentence i) is the only correct match; there is no class
  masking. Ties go to the lowest index.

  Returns:
    {'image_to_text': fraction of images whose best sentence is their own,
     'text_to_image': fraction of sentences whose best image is their own}.
  """
  cosine = _cosine_matrix(img_global, sentence)
  own = jnp.arange(cosine.shape[0])
  return {
      'image_to_text': jnp.mean(jnp.argmax(cosine, axis=1) == own),
      'text_to_image': jnp.mean(jnp.argmax(cosine, axis=0) == own),
  }
