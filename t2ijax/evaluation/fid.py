"""Fréchet Inception Distance exactly as pytorch-fid (0.3.0) computes it.

    stats = RunningStats()
    for out in FidInception.from_file(WEIGHTS).iterate(uint8_batches):
      stats.update(out['pool3'])
    mu, sigma = stats.mean_and_covariance()
    fid = frechet_distance(mu, sigma, *load_stats('reference.npz'))

Features are pytorch-fid's: the 2048-d pool3 of its Inception port of the
2015-12-05 TF graph (`t2ijax.evaluation.features`). Statistics are kept in
float64 on the host as running sums (sum of features, sum of outer products),
so 30,000 images never sit in memory together; `sigma` is np.cov's unbiased
estimate. The distance uses scipy's sqrtm with pytorch-fid's fallbacks (eps on
the diagonals when the root is not finite; the real part when the imaginary
one is negligible). Statistics files are pytorch-fid's `.npz` with keys `mu`
and `sigma`, so files made by either tool work in the other.

The command line lives in `fid_cli.py` and runs as
`python -m t2ijax.evaluation.fid` (see there).

Which FID this is matters when comparing with papers: DM-GAN and DF-GAN's
"PyTorch FID" used torchvision's ImageNet Inception instead
(reference/pixelcnn_metrics.md §B1.4); numbers from the two differ.
"""

import os
from typing import Iterable, Optional, Union

from absl import logging
import numpy as np
import scipy.linalg

from t2ijax.errors import DataLayoutError

# pytorch-fid's offset and tolerance.
DEFAULT_EPS = 1e-6
_IMAGINARY_ATOL = 1e-3
FEATURE_DIM = 2048


class RunningStats:
  """Mean and covariance of feature rows seen in batches, in float64.

  Sums are taken around a shift (the first batch's mean) so that the
  covariance does not come from subtracting two large, nearly equal numbers
  when the features' mean is large compared with their spread.
  """

  def __init__(self):
    self.count = 0
    self._shift: Optional[np.ndarray] = None
    self._sum: Optional[np.ndarray] = None
    self._outer: Optional[np.ndarray] = None

  def update(self, features: np.ndarray) -> None:
    """Adds rows of `features` (B, D)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f'features must be (batch, dim); got {x.shape}.')
    if not x.shape[0]:
      return
    if self._shift is None:
      self._shift = x.mean(axis=0)
      self._sum = np.zeros(x.shape[1])
      self._outer = np.zeros((x.shape[1], x.shape[1]))
    elif x.shape[1] != self._shift.shape[0]:
      raise ValueError(f'features of dim {x.shape[1]} after dim '
                       f'{self._shift.shape[0]}.')
    x = x - self._shift
    self.count += x.shape[0]
    self._sum += x.sum(axis=0)
    self._outer += x.T @ x

  def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu (D,), sigma (D, D)) == (np.mean(X, 0), np.cov(X, rowvar=False))."""
    if self.count < 2:
      raise ValueError(
          f'a covariance needs at least 2 feature rows; got {self.count}.')
    centred_mean = self._sum / self.count
    sigma = (self._outer - self.count * np.outer(centred_mean, centred_mean)
             ) / (self.count - 1)
    # Exactly symmetric, as np.cov's result is.
    sigma = (sigma + sigma.T) / 2
    return self._shift + centred_mean, sigma


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """pytorch-fid's (mu, sigma) of all rows at once."""
  x = np.asarray(features, np.float64)
  return np.mean(x, axis=0), np.cov(x, rowvar=False)


def statistics_of_batches(batches: Iterable[np.ndarray]
                          ) -> tuple[np.ndarray, np.ndarray, int]:
  """(mu, sigma, count) of the feature rows of every batch, streamed."""
  stats = RunningStats()
  for features in batches:
    stats.update(features)
  mu, sigma = stats.mean_and_covariance()
  return mu, sigma, stats.count


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = DEFAULT_EPS) -> float:
  """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), as pytorch-fid.

  Raises:
    ValueError: the shapes disagree, or sqrtm leaves an imaginary part on the
      diagonal above 1e-3 (usually singular covariances: fewer images than
      feature dimensions).
  """
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape:
    raise ValueError(f'mean vectors differ in shape: {mu1.shape} vs {mu2.shape}.')
  if sigma1.shape != sigma2.shape:
    raise ValueError(
        f'covariances differ in shape: {sigma1.shape} vs {sigma2.shape}.')
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    logging.warning('FID: sqrtm of the covariance product is singular; '
                    'adding %g to the diagonals.', eps)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=_IMAGINARY_ATOL):
      largest = np.max(np.abs(covmean.imag))
      raise ValueError(
          f'FID: imaginary component {largest} in sqrtm(sigma1 sigma2); the '
          'covariances are likely singular (use at least as many images as '
          f'feature dimensions, {mu1.shape[0]}).')
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2)
               - 2 * np.trace(covmean))


# ---- pytorch-fid's statistics files ----


def save_stats(path: Union[str, os.PathLike], mu: np.ndarray,
               sigma: np.ndarray) -> str:
  """Writes `mu`, `sigma` as pytorch-fid's `.npz` (np.savez, float64)."""
  path = os.fspath(path)
  if not path.endswith('.npz'):
    # np.savez would append it, and the caller would look for the wrong file.
    path += '.npz'
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, mu=np.asarray(mu, np.float64),
           sigma=np.asarray(sigma, np.float64))
  return path


def load_stats(path: Union[str, os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from a pytorch-fid `.npz` (keys `mu` and `sigma`).

  Raises:
    DataLayoutError: no such file, not an .npz, other keys or bad shapes.
  """
  path = os.path.expanduser(os.fspath(path))
  fix = ('make one with python -m t2ijax.evaluation.fid --save_stats '
         'IMAGES_DIR OUT.npz --inception=WEIGHTS (or pytorch-fid --save-stats).')
  if not os.path.isfile(path):
    raise DataLayoutError(f'No FID statistics file at {path!r}: {fix}')
  try:
    with np.load(path) as data:
      keys = set(data.files)
      if not {'mu', 'sigma'} <= keys:
        raise DataLayoutError(
            f'{path!r} has keys {sorted(keys)}, not pytorch-fid\'s mu and '
            f'sigma: {fix}')
      mu, sigma = data['mu'].astype(np.float64), data['sigma'].astype(np.float64)
  except (OSError, ValueError) as error:
    raise DataLayoutError(f'{path!r} is not an .npz file ({error}): {fix}'
                          ) from error
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise DataLayoutError(
        f'{path!r}: mu {mu.shape} and sigma {sigma.shape} are not a (D,) '
        f'mean and its (D, D) covariance: {fix}')
  return mu, sigma


if __name__ == '__main__':
  from t2ijax.evaluation import fid_cli  # pylint: disable=g-import-not-at-top
  fid_cli.run()
