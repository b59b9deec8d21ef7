"""Tests for the shapes attribute classifier: accuracy, agreement, cache.

One classifier, trained with the real default recipe at 64 pixels, serves
all tests; it is trained through the cache so the round trip can be checked.
"""

import io

import numpy as np
from PIL import Image
import pytest

from t2ijax.data import shapes
from t2ijax.evaluation import shapes_classifier as sc

_SIZE = 64
_NUM_TEST = 500


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('classifier_cache'))


@pytest.fixture(scope='module')
def classifier(cache_dir):
  return sc.load_or_train(cache_dir, _SIZE, seed=0)


@pytest.fixture(scope='module')
def test_split():
  """Images of the data set's own test split and one caption each."""
  images, captions = [], []
  for example in shapes.generate('test', _NUM_TEST, _SIZE,
                                 captions_per_image=3):
    images.append(np.asarray(Image.open(io.BytesIO(example.image_bytes))))
    captions.append(example.captions[0])
  return np.stack(images), captions


def test_heldout_accuracy_is_high(classifier):
  accuracy = classifier.real_accuracy()
  # Measured 0.95-0.98 for shape and background, >= 0.998 for the rest.
  assert accuracy['shape'] > 0.9
  assert accuracy['background'] > 0.9
  for name in ('color', 'size', 'position'):
    assert accuracy[name] > 0.97, name
  assert accuracy['all4'] > 0.88
  assert accuracy['mean'] == pytest.approx(
      np.mean([accuracy[name] for name in sc.REQUIRED]))


def test_agreement_with_own_captions_is_high(classifier, test_split):
  images, captions = test_split
  agreement = sc.attribute_agreement(classifier, images, captions)
  assert agreement['shape'] > 0.9
  for name in ('color', 'size', 'position'):
    assert agreement[name] > 0.97, name
  # About half of the captions name the background; only those count.
  assert 'background' in agreement and agreement['background'] > 0.85
  assert agreement['all4'] > 0.88


def test_agreement_with_shuffled_captions_is_chance(classifier, test_split):
  images, captions = test_split
  order = np.random.default_rng(0).permutation(len(captions))
  agreement = sc.attribute_agreement(classifier, images,
                                     [captions[i] for i in order])
  chance = sc.chance_levels()
  # 500 images: one standard error is at most ~0.02 (~0.035 for the ~250
  # captions naming a background).
  for name in sc.REQUIRED + ('mean',):
    assert abs(agreement[name] - chance[name]) < 0.08, name
  assert abs(agreement['background'] - chance['background']) < 0.12
  assert agreement['all4'] < 0.03


def test_chance_levels():
  chance = sc.chance_levels()
  assert chance['shape'] == pytest.approx(1 / 5)
  assert chance['color'] == pytest.approx(1 / 6)
  assert chance['size'] == pytest.approx(1 / 2)
  assert chance['background'] == pytest.approx(1 / 4)
  assert chance['all4'] == pytest.approx(1 / 300)


class _FixedClassifier:
  """Predicts fixed labels, to check the bookkeeping of attribute_agreement."""

  def __init__(self, labels):
    self.labels = labels

  def predict(self, images):
    return {name: np.asarray(values)[:len(images)]
            for name, values in self.labels.items()}


def test_agreement_counts_background_only_where_stated():
  captions = ['a small red circle on the left',
              'a large blue square at the top on a striped background']
  fixed = _FixedClassifier({'shape': [0, 0], 'color': [0, 2], 'size': [0, 1],
                            'position': [0, 2], 'background': [3, 3]})
  agreement = sc.attribute_agreement(fixed, np.zeros((2, 8, 8, 3)), captions)
  assert agreement['shape'] == 0.5  # the square was called a circle
  assert agreement['color'] == agreement['size'] == 1.0
  assert agreement['all4'] == 0.5
  # Only the second caption names a background (stripes, 1), and 3 != 1;
  # the first image's background is not judged at all.
  assert agreement['background'] == 0.0

  no_background = sc.attribute_agreement(fixed, np.zeros((1, 8, 8, 3)),
                                         captions[:1])
  assert 'background' not in no_background
  with pytest.raises(ValueError):
    sc.attribute_agreement(fixed, np.zeros((2, 8, 8, 3)), captions[:1])


def test_uint8_and_float_inputs_agree(classifier, test_split):
  images = test_split[0][:64]
  as_uint8 = classifier.predict(images)
  as_float = classifier.predict(images.astype(np.float32) / 127.5 - 1.0)
  for name in sc.ATTRIBUTE_NAMES:
    np.testing.assert_array_equal(as_uint8[name], as_float[name])
    assert as_uint8[name].shape == (64,)
  with pytest.raises(ValueError):
    classifier.predict(np.zeros((2, 32, 32, 3), np.uint8))


def test_cache_round_trip(classifier, cache_dir, test_split, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('the cached classifier should have been loaded')

  monkeypatch.setattr(sc, 'train_classifier', fail)
  loaded = sc.load_or_train(cache_dir, _SIZE, seed=0)
  assert loaded.real_accuracy() == classifier.real_accuracy()
  images = test_split[0]
  expected, got = classifier.predict(images), loaded.predict(images)
  for name in sc.ATTRIBUTE_NAMES:
    np.testing.assert_array_equal(expected[name], got[name])
  # Another seed or size is another entry, so it would have to train.
  with pytest.raises(AssertionError):
    sc.load_or_train(cache_dir, _SIZE, seed=1)


def test_large_images_are_downscaled_to_the_working_size(classifier):
  assert sc.working_size(256) == sc.working_size(128) == 64
  assert sc.working_size(32) == 32
  # A 128-pixel classifier judges at 64 with the same network, so the 64-pixel
  # weights must read real 128-pixel images about as well as 64-pixel ones.
  big = sc.Classifier(classifier.params, 128, classifier.real_accuracy())
  images, labels = sc.render_split('downscale_check', 200, 128)
  predicted = big.predict(images)
  for i, name in enumerate(sc.REQUIRED):
    accuracy = np.mean(predicted[name] == labels[:, i])
    assert accuracy > 0.85, name
