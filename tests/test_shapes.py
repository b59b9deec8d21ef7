"""Tests for the procedural shapes data set: determinism, captions, pictures."""

import io
import itertools
import re

import numpy as np
from PIL import Image
import pytest

from t2ijax.data import shapes
from t2ijax.data.sources import shapes as shapes_source

_N_COLORS = len(shapes.ATTRIBUTES['color'])


def _attributes(**overrides: int) -> dict[str, int]:
  attributes = {name: 0 for name in shapes.ATTRIBUTE_NAMES}
  attributes.update(overrides)
  return attributes


def _decode(example) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(example.image_bytes)))


# --- Determinism and the examples' fields.


def test_same_seed_gives_identical_examples():
  first = list(shapes.generate('train', 6, 32, captions_per_image=4, seed=3))
  second = list(shapes.generate('train', 6, 32, captions_per_image=4, seed=3))
  assert first == second


def test_splits_and_seeds_give_different_images():
  train = list(shapes.generate('train', 6, 32, seed=0))
  test = list(shapes.generate('test', 6, 32, seed=0))
  other_seed = list(shapes.generate('train', 6, 32, seed=1))
  for a, b, c in zip(train, test, other_seed):
    assert a.image_bytes != b.image_bytes
    assert a.image_bytes != c.image_bytes


def test_example_does_not_depend_on_the_ones_before_it():
  tenth = list(shapes.generate('train', 10, 32, seed=5))[9]
  assert shapes.make_example('train', 9, 32, seed=5) == tenth


def test_number_of_captions_does_not_change_the_image():
  few = shapes.make_example('test', 3, 32, captions_per_image=2)
  many = shapes.make_example('test', 3, 32, captions_per_image=12)
  assert few.image_bytes == many.image_bytes
  assert few.attributes == many.attributes


@pytest.mark.parametrize('image_size', [32, 64, 256])
def test_example_fields(image_size):
  for i, example in enumerate(shapes.generate('val', 3, image_size,
                                              captions_per_image=7)):
    assert example.key == f'val_{i:06d}'
    assert _decode(example).shape == (image_size, image_size, 3)
    assert len(example.captions) == 7
    attributes = dict(zip(shapes.ATTRIBUTE_NAMES, example.attributes))
    assert example.class_id == (attributes['shape'] * _N_COLORS +
                                attributes['color'])
    assert 0 <= example.class_id < shapes.NUM_CLASSES


def test_source_delegates_to_generate():
  assert (list(shapes_source.read_split('train', 3, 32, 5, 2)) ==
          list(shapes.generate('train', 3, 32, captions_per_image=5, seed=2)))
  assert shapes_source.NUM_CLASSES == 30


# --- Attributes and captions.


def test_every_attribute_value_occurs():
  rng = np.random.default_rng(0)
  seen = {name: set() for name in shapes.ATTRIBUTE_NAMES}
  for _ in range(300):
    for name, value in shapes.sample_attributes(rng).items():
      seen[name].add(value)
  for name, values in shapes.ATTRIBUTES.items():
    assert seen[name] == set(range(len(values))), name


def test_every_caption_parses_back_to_the_attributes():
  rng = np.random.default_rng(1)
  background_mentions = 0
  for _ in range(300):
    attributes = shapes.sample_attributes(rng)
    captions = shapes.captions_for(attributes, 10, rng)
    assert len(set(captions)) == 10, captions
    for caption in captions:
      assert re.fullmatch(r'[a-z]+( [a-z]+)*', caption), caption
      parsed = shapes.parse_caption(caption)
      assert set(shapes.REQUIRED_IN_CAPTION) <= set(parsed), caption
      assert parsed == {name: attributes[name] for name in parsed}, caption
      background_mentions += 'background' in parsed
  # The background is named in some captions, not in all.
  assert 0.2 < background_mentions / 3000 < 0.8


def test_captions_use_an_before_vowels():
  orange = shapes.ATTRIBUTES['color'].index('orange')
  captions = shapes.captions_for(_attributes(color=orange), 30,
                                 np.random.default_rng(0))
  for caption in captions:
    assert not re.search(r'\ba [aeiou]', caption), caption


def test_parse_caption_reads_synonyms():
  parsed = shapes.parse_caption(
      'On the right side, a TINY violet plus sign over a chequered backdrop.')
  assert parsed == _attributes(shape=4, color=4, size=0, position=1,
                               background=3)


@pytest.mark.parametrize('caption', [
    'a small red circle',                        # no position
    'a red circle on the left',                  # no size
    'a small circle on the left',                # no colour
    'a small red thing on the left',             # no shape
    'a small red circle or a blue square on the left',  # two shapes
])
def test_parse_caption_rejects_missing_or_conflicting(caption):
  with pytest.raises(ValueError):
    shapes.parse_caption(caption)


# --- Rendering.


def _render_cases(rng, count, **fixed):
  for _ in range(count):
    attributes = shapes.sample_attributes(rng)
    attributes.update(fixed)
    yield attributes, shapes.render_with_mask(attributes, 64, rng)


def test_render_and_render_with_mask_draw_the_same_image():
  attributes = _attributes(shape=3, color=2, background=1)
  image = shapes.render(attributes, 64, np.random.default_rng(4))
  masked, mask = shapes.render_with_mask(attributes, 64,
                                         np.random.default_rng(4))
  np.testing.assert_array_equal(image, masked)
  assert mask.shape == (64, 64) and 0 <= mask.min() and mask.max() <= 1


def test_shape_has_the_named_colour_and_background_is_grey():
  rng = np.random.default_rng(2)
  palette = np.array(shapes.COLOR_RGB, dtype=np.float32)
  for color in range(_N_COLORS):
    for attributes, (image, mask) in _render_cases(rng, 8, color=color):
      inside = image[mask > 0.99].astype(np.float32)
      mean = inside.mean(axis=0)
      nearest = np.argmin(np.linalg.norm(palette - mean, axis=1))
      assert nearest == color, (attributes, mean)
      # Muted backgrounds: far less saturated than any shape colour.
      outside = image[mask == 0].astype(np.int32)
      saturation = outside.max(axis=1) - outside.min(axis=1)
      assert np.percentile(saturation, 99) < 50, attributes


def test_large_shapes_cover_clearly_more_area_than_small_ones():
  rng = np.random.default_rng(3)
  center = shapes.ATTRIBUTES['position'].index('center')
  for shape in range(len(shapes.ATTRIBUTES['shape'])):
    small = [mask.sum() for _, (_, mask) in
             _render_cases(rng, 6, shape=shape, size=0, position=center)]
    large = [mask.sum() for _, (_, mask) in
             _render_cases(rng, 6, shape=shape, size=1, position=center)]
    assert min(large) > 2 * max(small), (shape, small, large)
    # Even small shapes stay big enough to be recognised at 64x64.
    assert min(small) > 0.02 * 64 * 64, (shape, small)


def test_shape_centroid_lies_in_the_named_region():
  rng = np.random.default_rng(4)
  anchors = np.array(shapes.POSITION_ANCHORS) * 64
  positions = range(len(shapes.ATTRIBUTES['position']))
  sizes = range(len(shapes.ATTRIBUTES['size']))
  for position, size in itertools.product(positions, sizes):
    for attributes, (_, mask) in _render_cases(rng, 6, position=position,
                                               size=size):
      y, x = np.mgrid[0:64, 0:64] + 0.5
      centroid = np.array([(x * mask).sum(), (y * mask).sum()]) / mask.sum()
      nearest = np.argmin(np.linalg.norm(anchors - centroid, axis=1))
      assert nearest == position, (attributes, centroid)


def test_same_attributes_give_varied_images():
  attributes = _attributes(shape=1, color=1, size=1, position=4, background=2)
  images = [shapes.render(attributes, 32, np.random.default_rng(seed))
            for seed in range(4)]
  for a, b in itertools.combinations(images, 2):
    assert not np.array_equal(a, b)
