"""Inception Score: exp(E_x KL(p(y|x) || p(y))) over 10 splits, mean and std.

The protocol of improved-gan and StackGAN-inception-model
(reference/pixelcnn_metrics.md §B2.1): the N prediction rows are cut into
`splits` consecutive parts (rows [k N // splits, (k + 1) N // splits)); each
part has its own marginal p(y), the mean of its rows; the part's score is
exp(mean over its rows of sum_y p(y|x) (log p(y|x) - log p(y))). The result is
the mean and the population std (np.std) of the part scores.

Any classifier works: pass its logits (or probabilities) for the generated
images. For COCO the papers used the ImageNet Inception of the 2015-12-05 TF
graph, i.e. the 1008-way `logits` of `features.FidInception` here; for CUB
(and flowers) they used StackGAN's Inception fine-tuned on birds (50 classes;
20 for flowers), converted from its TF checkpoint by `python -m
t2ijax.convert --kind=cub_inception` and run by `features.StackGanClassifier`
(its `logits` have the background class dropped, as the official softmax
does; `eval.is_classifier` in the GAN evaluation). Scores from different
classifiers are not comparable.
"""

from typing import Callable, Iterable

import numpy as np
import scipy.special

DEFAULT_SPLITS = 10


def _split_bounds(count: int, splits: int) -> list[tuple[int, int]]:
  if splits < 1:
    raise ValueError(f'splits={splits} must be at least 1.')
  if count < splits:
    raise ValueError(
        f'{count} predictions cannot be cut into {splits} splits; generate '
        'more images (the papers use 30,000) or use fewer splits.')
  return [(k * count // splits, (k + 1) * count // splits)
          for k in range(splits)]


def _score(log_probs: np.ndarray) -> float:
  """exp(mean KL(p(y|x) || p(y))) of one split, from log p(y|x)."""
  probs = np.exp(log_probs)
  # Terms with p(y|x) = 0 contribute 0 to the KL (the limit of p log p); the
  # where discards the 0 * -inf they evaluate to.
  with np.errstate(divide='ignore', invalid='ignore'):
    log_marginal = np.log(probs.mean(axis=0))
    kl = np.where(probs > 0, probs * (log_probs - log_marginal), 0.0)
  return float(np.exp(np.mean(np.sum(kl, axis=1))))


def split_scores_from_log_probs(log_probs: np.ndarray,
                                splits: int = DEFAULT_SPLITS) -> np.ndarray:
  """The score of each split, from (N, K) log-probabilities."""
  log_probs = np.asarray(log_probs, np.float64)
  if log_probs.ndim != 2:
    raise ValueError(f'predictions must be (N, classes); got {log_probs.shape}.')
  return np.array([_score(log_probs[a:b])
                   for a, b in _split_bounds(len(log_probs), splits)])


def inception_score_from_logits(logits: np.ndarray,
                                splits: int = DEFAULT_SPLITS
                                ) -> tuple[float, float]:
  """(mean, std) over splits from (N, K) classifier logits (softmaxed here)."""
  log_probs = scipy.special.log_softmax(np.asarray(logits, np.float64), axis=1)
  scores = split_scores_from_log_probs(log_probs, splits)
  return float(np.mean(scores)), float(np.std(scores))


def inception_score_from_probs(probs: np.ndarray,
                               splits: int = DEFAULT_SPLITS
                               ) -> tuple[float, float]:
  """(mean, std) over splits from (N, K) probabilities (rows sum to 1)."""
  probs = np.asarray(probs, np.float64)
  if np.any(probs < 0) or not np.allclose(probs.sum(axis=-1), 1.0, atol=1e-5):
    raise ValueError('probabilities must be non-negative rows summing to 1; '
                     'pass logits to inception_score_from_logits instead.')
  with np.errstate(divide='ignore'):
    log_probs = np.log(probs)  # -inf where p = 0; _score zeroes those terms.
  scores = split_scores_from_log_probs(log_probs, splits)
  return float(np.mean(scores)), float(np.std(scores))


def inception_score_of_batches(
    images: Iterable[np.ndarray],
    logits_fn: Callable[[np.ndarray], np.ndarray],
    splits: int = DEFAULT_SPLITS) -> tuple[float, float]:
  """IS of image batches under any classifier `logits_fn(images) -> logits`.

  Only the logits are kept (N x K floats), never the images.
  """
  logits = [np.asarray(logits_fn(batch), np.float32) for batch in images]
  if not logits:
    raise ValueError('no images to score.')
  return inception_score_from_logits(np.concatenate(logits), splits)
