"""The symmetric structured joint embedding (SJE) loss of Reed et al., CVPR 2016.

For a batch of images and texts where text i describes image i
(cvpr2016 `train_sje_hybrid.lua`, JointEmbeddingLoss):
  score[i, j] = <image_i, text_j>
  image -> text: sum_i sum_{j != i} max(0, 1 + score[i, j] - score[i, i])
  text -> image: the same with the roles swapped (score transposed)
each divided by B * B, and summed (symmetric = 1). The official batches hold
one example per class; with class ids, pairs of the same class are not
counted as negatives (their terms are dropped, the denominator stays B * B).
"""

import jax
import jax.numpy as jnp


def _one_side(score: jax.Array, negatives: jax.Array) -> jax.Array:
  """Hinge terms of rows of `score` against their diagonal, over `negatives`."""
  b = score.shape[0]
  margins = jax.nn.relu(1.0 + score - jnp.diag(score)[:, None])
  return jnp.sum(jnp.where(negatives, margins, 0.0)) / (b * b)


def joint_embedding_loss(text: jax.Array, image: jax.Array,
                         class_ids: jax.Array | None = None,
                         symmetric: bool = True) -> dict[str, jax.Array]:
  """The SJE loss of (B, D) text and image embeddings, text i matching image i.

  Returns:
    {'loss', 'image_to_text', 'text_to_image', 'image_to_text_top1'}: the loss
    terms, and how often an image's best-scoring text is its own.
  """
  b = text.shape[0]
  score = image @ text.T                                  # (images, texts)
  negatives = ~jnp.eye(b, dtype=bool)
  if class_ids is not None:
    negatives &= class_ids[:, None] != class_ids[None, :]
  i2t = _one_side(score, negatives)
  t2i = _one_side(score.T, negatives.T) if symmetric else jnp.zeros(())
  top1 = jnp.mean((jnp.argmax(score, axis=1) == jnp.arange(b)).astype(jnp.float32))
  return {'loss': i2t + t2i, 'image_to_text': i2t, 'text_to_image': t2i,
          'image_to_text_top1': top1}
