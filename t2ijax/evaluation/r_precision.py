"""R-precision (R = 1 among 100 captions) as DM-GAN computes it.

reference/pixelcnn_metrics.md §B3 and attngan_family.md §4.4: for every
generated image, the candidates are its own caption and 99 mismatched
captions; each candidate's DAMSM sentence vector is scored by its cosine with
the image's DAMSM global feature (norm product clamped at 1e-8), and the image
is a hit when its own caption scores highest (ties count as hits: torch's
argmax returns the first maximum, and the true caption is candidate 0). The
binary outcomes are shuffled and cut into 10 chunks; the result is the mean
and the population std of the chunk means (fractions; papers print percent).

Mismatched captions. DM-GAN draws, for each image, 99 times (with
replacement) a random dataset item whose class differs from the image's and a
random caption of it (COCO's class ids are item indices, so "another image").
Here they are drawn, uniformly and with replacement, from the pool of captions
that conditioned the evaluated images themselves (one random caption of a
random test item each), keeping only those of another class. Over the papers'
30,000 images every test item is in the pool about equally often, so this is
the same distribution without encoding 99 extra captions per image; for a
small evaluation the pool is small, and the mismatched captions repeat more.

DM-GAN's chunks are elements [3000 k, 3000 k + 2999), an off-by-one that drops
one element per chunk; here chunk k is rows [k N // 10, (k + 1) N // 10).
"""

from typing import Optional

import numpy as np

NUM_MISMATCHED = 99
NUM_CHUNKS = 10
COSINE_EPS = 1e-8
# Rows per block when gathering candidates (bounds host memory at 30k images).
_BLOCK = 256


def candidate_cosines(image_features: np.ndarray,
                      candidates: np.ndarray) -> np.ndarray:
  """(N, M) cosines of image i with its M candidate sentence vectors.

  Args:
    image_features: (N, D).
    candidates: (N, M, D); candidate 0 is the true caption.
  """
  image = np.asarray(image_features, np.float64)
  cands = np.asarray(candidates, np.float64)
  dots = np.einsum('nd,nmd->nm', image, cands)
  norms = (np.linalg.norm(image, axis=-1)[:, None]
           * np.linalg.norm(cands, axis=-1))
  return dots / np.maximum(norms, COSINE_EPS)


def hits(image_features: np.ndarray, true_text: np.ndarray,
         mismatched_text: np.ndarray) -> np.ndarray:
  """(N,) bool: the true caption (N, D) outscores (or ties) all mismatched
  ones (N, M, D) by cosine with the image feature (N, D)."""
  candidates = np.concatenate(
      [np.asarray(true_text)[:, None], np.asarray(mismatched_text)], axis=1)
  return np.argmax(candidate_cosines(image_features, candidates), axis=1) == 0


def sample_mismatched(image_classes: np.ndarray, pool_classes: np.ndarray,
                      num: int, rng: np.random.Generator) -> np.ndarray:
  """(N, num) indices into the pool, uniformly among entries of another class.

  Raises:
    ValueError: some image has no pool entry of another class.
  """
  image_classes = np.asarray(image_classes)
  pool_classes = np.asarray(pool_classes)
  index = rng.integers(len(pool_classes), size=(len(image_classes), num))
  # Rejection keeps the draw uniform over the allowed entries.
  for _ in range(64):
    bad = pool_classes[index] == image_classes[:, None]
    if not bad.any():
      return index
    index[bad] = rng.integers(len(pool_classes), size=int(bad.sum()))
  # A class that fills most of the pool: draw its rows from explicit lists.
  bad = pool_classes[index] == image_classes[:, None]
  for row in np.flatnonzero(bad.any(axis=1)):
    allowed = np.flatnonzero(pool_classes != image_classes[row])
    if not len(allowed):
      raise ValueError(
          f'no caption of a class other than {image_classes[row]} to draw '
          'mismatched captions from; evaluate more images or more classes.')
    index[row, bad[row]] = rng.choice(allowed, size=int(bad[row].sum()))
  return index


def chunk_mean_std(outcomes: np.ndarray, rng: np.random.Generator,
                   num_chunks: int = NUM_CHUNKS) -> tuple[float, float]:
  """Shuffles the binary outcomes, then mean and np.std of the chunk means."""
  outcomes = np.asarray(outcomes, np.float64).copy()
  if len(outcomes) < num_chunks:
    raise ValueError(f'{len(outcomes)} outcomes cannot be cut into '
                     f'{num_chunks} chunks; evaluate more images.')
  rng.shuffle(outcomes)
  count = len(outcomes)
  means = np.array([outcomes[k * count // num_chunks:
                             (k + 1) * count // num_chunks].mean()
                    for k in range(num_chunks)])
  return float(np.mean(means)), float(np.std(means))


def r_precision(image_features: np.ndarray, text_features: np.ndarray,
                class_ids: np.ndarray, *, num_mismatched: int = NUM_MISMATCHED,
                num_chunks: int = NUM_CHUNKS, seed: Optional[int] = 0
                ) -> dict[str, float]:
  """R-precision of N generated images against their own captions.

  Args:
    image_features: (N, D) DAMSM global features of the generated images.
    text_features: (N, D) DAMSM sentence vectors of the captions they were
      generated from; they are also the pool of mismatched captions.
    class_ids: (N,) class of each image's data item.
    num_mismatched: wrong captions per image (99: R@1 among 100).
    num_chunks: chunks for the mean and std (10).
    seed: seeds the mismatched draws and the shuffle.

  Returns:
    {'r_precision': mean of the chunk means, 'r_precision_std': their std}.
  """
  image_features = np.asarray(image_features)
  text_features = np.asarray(text_features)
  class_ids = np.asarray(class_ids)
  count = len(image_features)
  if text_features.shape != image_features.shape or class_ids.shape != (count,):
    raise ValueError(
        f'need (N, D) image and text features and (N,) class ids; got '
        f'{image_features.shape}, {text_features.shape}, {class_ids.shape}.')
  rng = np.random.default_rng(seed)
  mismatched = sample_mismatched(class_ids, class_ids, num_mismatched, rng)
  outcomes = np.concatenate([
      hits(image_features[i:i + _BLOCK], text_features[i:i + _BLOCK],
           text_features[mismatched[i:i + _BLOCK]])
      for i in range(0, count, _BLOCK)])
  mean, std = chunk_mean_std(outcomes, rng, num_chunks)
  return {'r_precision': mean, 'r_precision_std': std}
