"""FID, Inception Score and R-precision of a generator's evaluation images.

What `--mode=eval` of the GAN methods reports next to the DAMSM retrieval and
shapes scores (t2ijax/trainers/gan.py). Config fields (`config.eval`):

  metrics            which of ('fid', 'is', 'r_precision') to compute.
  num_images         images to generate (30000 in the papers; -1: the split's
                     batches, capped by eval.num_batches).
  inception_weights  pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a
                     .msgpack from features.save_inception_variables. Empty:
                     FID (and IS unless is_classifier is set) are skipped,
                     and the result says why.
  is_classifier      the classifier of the Inception Score. '' (default): the
                     1008 ImageNet logits of the FID Inception above, the COCO
                     protocol. A directory written by python -m t2ijax.convert
                     --kind=cub_inception: StackGAN-inception-model's Inception
                     fine-tuned on CUB (or flowers), the CUB protocol of
                     StackGAN to DF-GAN (bilinear resize to 299 as
                     scipy.misc.imresize, x / 127.5 - 1, softmax over the
                     classes without the background). Scores of the two are
                     not comparable.
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


@functools.lru_cache(maxsize=2)
def _is_classifier(directory: str, batch_size: int
                   ) -> features_lib.StackGanClassifier:
  return features_lib.StackGanClassifier.from_directory(
      directory, batch_size=batch_size)


class InceptionStream:
  """FID statistics and IS logits of generated images, fed batch by batch.

  The GAN evaluation feeds each batch as it comes off the device and keeps
  only 2048 + 1008 numbers per image (2048 + 50 with the CUB classifier),
  not the images: the papers' 30,000 images at 256 px would be ~6 GB of
  uint8 on the host. Images are regrouped into full Inception batches (only
  the last one is padded); with `eval.is_classifier` set, each batch goes
  through the FID Inception (if FID is computed) and the IS classifier.
  """

  def __init__(self, eval_config, limit: int | None = None):
    """Resolves weights and reference statistics; unusable ones become skip reasons.

    Args:
      eval_config: `config.eval` (module doc).
      limit: images to use at most (later ones are ignored), or None.
    """
    names = check_metrics(eval_config.get('metrics', METRICS))
    self.skipped: dict[str, str] = {}
    self.limit, self.count = limit, 0
    self.stats, self.logits, self.pending = fid_lib.RunningStats(), [], []
    self.extractor, self.classifier, self.reference = None, None, None
    self.want_fid, self.want_is = 'fid' in names, 'is' in names
    self.weights = eval_config.get('inception_weights', '')
    self.is_classifier = eval_config.get('is_classifier', '')
    batch_size = int(eval_config.get('inception_batch_size',
                                     features_lib.DEFAULT_BATCH_SIZE))
    if self.want_is and self.is_classifier:
      try:
        self.classifier = _is_classifier(self.is_classifier, batch_size)
      except errors.T2IError as error:
        self.skipped['inception_score_skipped'] = (
            f'eval.is_classifier={self.is_classifier!r}: {error} Or set '
            "eval.is_classifier='' for the FID Inception's ImageNet logits.")
    # The IS reads the FID Inception's logits unless a classifier is set.
    self.is_from_fid_inception = self.want_is and not self.is_classifier
    if not (self.want_fid or self.is_from_fid_inception):
      return
    if not self.weights:
      self._skip(f'eval.inception_weights is not set. {features_lib.WEIGHTS_HINT}')
      return
    if self.want_fid:
      stats_path = eval_config.get('fid_stats', '')
      if not stats_path:
        self._skip(
            'eval.fid_stats is not set: make reference statistics of real images '
            'with python -m t2ijax.evaluation.fid --save_stats ... and set '
            'eval.fid_stats=PATH.npz.', fid=True, inception_score=False)
      else:
        try:
          self.reference = fid_lib.load_stats(stats_path)
        except errors.T2IError as error:
          self._skip(str(error), fid=True, inception_score=False)
    self.want_fid = self.reference is not None
    if not (self.want_fid or self.is_from_fid_inception):
      return
    try:
      self.extractor = _extractor(self.weights, batch_size)
    except errors.T2IError as error:
      self._skip(str(error))

  def _skip(self, reason: str, fid: bool = True, inception_score: bool = True) -> None:
    """Records why FID and/or the IS from the FID Inception are skipped."""
    if fid and self.want_fid:
      self.skipped['fid_skipped'] = reason
    if inception_score and self.is_from_fid_inception:
      self.skipped['inception_score_skipped'] = reason

  def _models(self) -> list[Any]:
    return [m for m in (self.extractor, self.classifier) if m is not None]

  def _run(self, rows: np.ndarray) -> None:
    if self.extractor is not None:
      for out in self.extractor.iterate([rows]):
        self.stats.update(out['pool3'])
        if self.is_from_fid_inception and 'logits' in out:
          self.logits.append(out['logits'])
    if self.classifier is not None:
      for out in self.classifier.iterate([rows]):
        self.logits.append(out['logits'])

  def add(self, images: np.ndarray) -> None:
    """(B, H, W, 3) uint8 generated images (a no-op when nothing is computed)."""
    if not self._models():
      return
    if self.limit is not None:
      images = images[:max(self.limit - self.count, 0)]
    self.count += len(images)
    self.pending.append(np.asarray(images))
    pending = sum(len(x) for x in self.pending)
    batch = max(m.batch_size for m in self._models())
    if pending >= batch:
      rows = np.concatenate(self.pending)
      full = len(rows) - len(rows) % batch
      self._run(rows[:full])
      self.pending = [rows[full:]] if full < len(rows) else []

  def metrics(self) -> dict[str, Any]:
    """FID / IS of everything added, and the reasons for what was skipped."""
    result = dict(self.skipped)
    if not self._models():
      return result
    if self.pending:
      self._run(np.concatenate(self.pending))
      self.pending = []
    if self.want_fid:
      try:
        mu, sigma = self.stats.mean_and_covariance()
        result['fid'] = fid_lib.frechet_distance(mu, sigma, *self.reference)
      except ValueError as error:
        result['fid_skipped'] = str(error)
      if self.stats.count < fid_lib.FEATURE_DIM:
        logging.warning('FID of %d images (< %d): the covariance is singular and '
                        'the value is biased upwards; papers use 30,000.',
                        self.stats.count, fid_lib.FEATURE_DIM)
    if self.classifier is not None or self.is_from_fid_inception:
      if not self.logits:
        result['inception_score_skipped'] = (
            'no images were given' if self.classifier is not None else
            f'the weights in {self.weights} have no fc classifier (a pytorch-fid '
            f'wrapper state dict?); use {features_lib.WEIGHTS_FILE} itself.')
      else:
        try:
          mean, std = inception_score.inception_score_from_logits(
              np.concatenate(self.logits))
          result.update(inception_score=mean, inception_score_std=std)
        except ValueError as error:
          result['inception_score_skipped'] = str(error)
    return result


def generated_image_metrics(eval_config, images: np.ndarray | None = None, *,
                            image_features: np.ndarray,
                            text_features: np.ndarray,
                            class_ids: np.ndarray,
                            inception: InceptionStream | None = None) -> dict[str, Any]:
  """The configured metrics of N generated images.

  Args:
    eval_config: `config.eval` (see the module doc for the fields read).
    images: (N, H, W, 3) uint8 generated images; None when `inception`
      has already been fed them.
    image_features: (N, D) DAMSM global features of those images.
    text_features: (N, D) DAMSM sentence vectors of their captions.
    class_ids: (N,) class ids of the captions' data items.
    inception: an `InceptionStream` fed the N images batch by batch.

  Returns:
    Floats (`fid`, `inception_score`, `inception_score_std`, `r_precision`,
    `r_precision_std`, `num_generated_images`) and, for metrics that could not
    be computed, `<metric>_skipped` strings saying why.
  """
  names = check_metrics(eval_config.get('metrics', METRICS))
  result: dict[str, Any] = {'num_generated_images': float(len(image_features))}
  if 'r_precision' in names:
    try:
      result.update(r_precision_lib.r_precision(image_features, text_features,
                                                class_ids))
    except ValueError as error:
      result['r_precision_skipped'] = str(error)
  if inception is None:
    if images is None:
      raise ValueError('generated_image_metrics needs the images or an InceptionStream fed them')
    inception = InceptionStream(eval_config)
    inception.add(images)
  result.update(inception.metrics())
  for key, value in result.items():
    if key.endswith('_skipped'):
      logging.warning('%s: %s', key, value)
  return result
