"""FID, Inception Score and R-precision of a generator's evaluation images.

What `--mode=eval` of the GAN methods reports next to the DAMSM retrieval and
shapes scores (t2ijax/trainers/gan.py). Config fields (`config.eval`):

  metrics            which of ('fid', 'is', 'r_precision') to compute.
  num_images         images to generate (30000 in the papers; -1: the split's
                     batches, capped by eval.num_batches).
  inception_weights  pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a
                     .msgpack from features.save_inception_variables. Empty:
                     FID and IS are skipped, and the result says why.
  fid_stats          reference statistics (.npz with mu, sigma) of real images,
                     e.g. from python -m t2ijax.evaluation.fid --save_stats.
                     Empty: FID is skipped, and the result says why.
  inception_batch_size  images per sharded Inception call.

A metric that cannot be computed is reported as `<metric>_skipped: reason`
instead of failing the evaluation (training has already ended by then).
R-precision needs only the DAMSM, so it runs in the demos; FID and IS need a
full-size Inception on 299x299 inputs (a few images/s on a 2-core CPU), so
they run only where the weights are configured.
"""

import functools
from typing import Any

from absl import logging
import numpy as np

from t2ijax import errors
from t2ijax.evaluation import features as features_lib
from t2ijax.evaluation import fid as fid_lib
from t2ijax.evaluation import inception_score
from t2ijax.evaluation import r_precision as r_precision_lib

METRICS = ('fid', 'is', 'r_precision')


def check_metrics(names) -> tuple[str, ...]:
  names = tuple(names)
  unknown = [n for n in names if n not in METRICS]
  if unknown:
    raise errors.ConfigError(
        f'eval.metrics has unknown {unknown}; choose from {METRICS}.')
  return names


@functools.lru_cache(maxsize=2)
def _extractor(weights: str, batch_size: int) -> features_lib.FidInception:
  # Cached: periodic evaluations reuse the converted weights and the compiled
  # program instead of paying both every time.
  return features_lib.FidInception.from_file(weights, batch_size=batch_size)


def _inception_metrics(eval_config, images: np.ndarray, names) -> dict[str, Any]:
  result = {}
  want_fid, want_is = 'fid' in names, 'is' in names
  weights = eval_config.get('inception_weights', '')
  if not weights:
    reason = (f'eval.inception_weights is not set. {features_lib.WEIGHTS_HINT}')
    if want_fid:
      result['fid_skipped'] = reason
    if want_is:
      result['inception_score_skipped'] = reason
    return result
  reference = None
  if want_fid:
    stats_path = eval_config.get('fid_stats', '')
    if not stats_path:
      result['fid_skipped'] = (
          'eval.fid_stats is not set: make reference statistics of real images '
          'with python -m t2ijax.evaluation.fid --save_stats ... and set '
          'eval.fid_stats=PATH.npz.')
    else:
      try:
        reference = fid_lib.load_stats(stats_path)
      except errors.T2IError as error:
        result['fid_skipped'] = str(error)
  want_fid = reference is not None
  if not (want_fid or want_is):
    return result
  try:
    extractor = _extractor(weights, int(eval_config.get(
        'inception_batch_size', features_lib.DEFAULT_BATCH_SIZE)))
  except errors.T2IError as error:
    if want_fid:
      result['fid_skipped'] = str(error)
    if want_is:
      result['inception_score_skipped'] = str(error)
    return result

  stats, logits = fid_lib.RunningStats(), []
  batch = extractor.batch_size
  for out in extractor.iterate(images[i:i + batch]
                               for i in range(0, len(images), batch)):
    stats.update(out['pool3'])
    if 'logits' in out:
      logits.append(out['logits'])
  if want_fid:
    try:
      mu, sigma = stats.mean_and_covariance()
      result['fid'] = fid_lib.frechet_distance(mu, sigma, *reference)
    except ValueError as error:
      result['fid_skipped'] = str(error)
    if stats.count < fid_lib.FEATURE_DIM:
      logging.warning('FID of %d images (< %d): the covariance is singular and '
                      'the value is biased upwards; papers use 30,000.',
                      stats.count, fid_lib.FEATURE_DIM)
  if want_is:
    if not logits:
      result['inception_score_skipped'] = (
          f'the weights in {weights} have no fc classifier (a pytorch-fid '
          f'wrapper state dict?); use {features_lib.WEIGHTS_FILE} itself.')
    else:
      try:
        mean, std = inception_score.inception_score_from_logits(
            np.concatenate(logits))
        result.update(inception_score=mean, inception_score_std=std)
      except ValueError as error:
        result['inception_score_skipped'] = str(error)
  return result


def generated_image_metrics(eval_config, images: np.ndarray, *,
                            image_features: np.ndarray,
                            text_features: np.ndarray,
                            class_ids: np.ndarray) -> dict[str, Any]:
  """The configured metrics of N generated images.

  Args:
    eval_config: `config.eval` (see the module doc for the fields read).
    images: (N, H, W, 3) uint8 generated images.
    image_features: (N, D) DAMSM global features of those images.
    text_features: (N, D) DAMSM sentence vectors of their captions.
    class_ids: (N,) class ids of the captions' data items.

  Returns:
    Floats (`fid`, `inception_score`, `inception_score_std`, `r_precision`,
    `r_precision_std`, `num_generated_images`) and, for metrics that could not
    be computed, `<metric>_skipped` strings saying why.
  """
  names = check_metrics(eval_config.get('metrics', METRICS))
  result: dict[str, Any] = {'num_generated_images': float(len(images))}
  if 'r_precision' in names:
    try:
      result.update(r_precision_lib.r_precision(image_features, text_features,
                                                class_ids))
    except ValueError as error:
      result['r_precision_skipped'] = str(error)
  result.update(_inception_metrics(eval_config, images, names))
  for key, value in result.items():
    if key.endswith('_skipped'):
      logging.warning('%s: %s', key, value)
  return result
