"""Tests of the input pipeline on a tiny shapes data set.

The pipeline's contract: example k of a run is a pure function of (seed, k),
row r of step s is k = s * global_batch + r, and each process loads its rows.
"""

import ml_collections
import numpy as np
from PIL import Image
import pytest

from t2ijax import config_base
from t2ijax import errors
from t2ijax.data import pipeline
from t2ijax.data import prepare
from t2ijax.data import text
from t2ijax.trainers import loop

NUM_TRAIN = 48
GLOBAL_BATCH = 8
STEPS_PER_EPOCH = NUM_TRAIN // GLOBAL_BATCH
IMAGE_SIZES = (16, 32)
# Shorter than most shapes captions, so that sub-sampling is exercised.
MAX_WORDS = 8


@pytest.fixture(scope='module')
def config(data_dir):
  d = config_base.data_config('shapes')
  d.data_dir = data_dir
  d.captions_per_image = 3
  d.image_sizes = IMAGE_SIZES
  d.max_words = MAX_WORDS
  d.shapes.update(num_train=NUM_TRAIN, num_test=16, image_size=32)
  return ml_collections.ConfigDict({'seed': 0, 'data': d})


@pytest.fixture(scope='module')
def prepared(config):
  return prepare.prepare(config.data)


def make_loader(config, prepared, seed=0, shuffle=True):
  config = config.copy_and_resolve_references()
  config.seed = seed
  return loop.make_loader(config, prepared, 'train', shuffle=shuffle)


def take(loader, num_steps, start_step=0, **kwargs):
  return list(pipeline.batches(loader, GLOBAL_BATCH, start_step, num_steps,
                               num_parallel_calls=2, **kwargs))


def assert_batches_equal(got, expected):
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    assert sorted(a) == sorted(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def words_of(ids, vocab):
  return vocab.decode(ids).split()


def is_subsequence(words, sentence):
  remaining = iter(sentence)
  return all(word in remaining for word in words)


def assert_caption_from(ids, length, record, vocab):
  """The caption is one of the record's, sub-sampled in order to MAX_WORDS."""
  assert 0 < length <= MAX_WORDS
  assert (ids[:length] > 0).all() and (ids[length:] == 0).all()
  words = words_of(ids, vocab)
  assert len(words) == length
  sources = [text.tokenize(c.decode()) for c in record['captions']]
  assert any(is_subsequence(words, s) and length == min(len(s), MAX_WORDS)
             for s in sources), (words, sources)


# --- determinism --------------------------------------------------------------


def test_same_seed_same_batches_other_seed_differs(config, prepared):
  first = take(make_loader(config, prepared, seed=0), 3)
  assert_batches_equal(take(make_loader(config, prepared, seed=0), 3), first)
  other = take(make_loader(config, prepared, seed=1), 3)
  assert any(not np.array_equal(a['index'], b['index'])
             for a, b in zip(first, other))
  assert any(not np.array_equal(a['image32'], b['image32'])
             for a, b in zip(first, other))


def test_resumed_iterator_continues_where_the_run_was(config, prepared):
  loader = make_loader(config, prepared)
  whole = take(loader, 6)
  assert_batches_equal(take(loader, 3, start_step=3), whole[3:])


def test_processes_load_their_rows_of_the_global_batch(config, prepared):
  loader = make_loader(config, prepared)
  single = take(loader, 2, start_step=5)
  parts = [take(loader, 2, start_step=5, process_index=p, process_count=2)
           for p in range(2)]
  for step, expected in enumerate(single):
    assert all(sorted(part[step]) == sorted(expected) for part in parts)
    for key, value in expected.items():
      joined = np.concatenate([part[step][key] for part in parts])
      np.testing.assert_array_equal(joined, value, err_msg=key)


def test_each_epoch_is_a_new_permutation(config, prepared):
  loader = make_loader(config, prepared)
  batches = take(loader, 2 * STEPS_PER_EPOCH)
  indices = np.concatenate([b['index'] for b in batches])
  epochs = indices.reshape(2, NUM_TRAIN)
  for epoch in epochs:
    assert sorted(epoch.tolist()) == list(range(NUM_TRAIN))
  assert epochs[0].tolist() != epochs[1].tolist()
  # The loader's index() is what the batches hold.
  assert indices.tolist() == [loader.index(k) for k in range(len(indices))]


def test_unshuffled_loader_reads_in_order(config, prepared):
  loader = make_loader(config, prepared, shuffle=False)
  (batch,) = take(loader, 1, start_step=STEPS_PER_EPOCH + 1)
  assert batch['index'].tolist() == list(range(GLOBAL_BATCH, 2 * GLOBAL_BATCH))


# --- example contents ---------------------------------------------------------


def test_mismatched_caption_comes_from_another_class(config, prepared):
  loader = make_loader(config, prepared)
  class_ids, source = prepared.class_ids['train'], prepared.source('train')
  for batch in take(loader, STEPS_PER_EPOCH):
    for row in range(GLOBAL_BATCH):
      index, wrong = batch['index'][row], batch['wrong_index'][row]
      assert batch['class_id'][row] == class_ids[index]
      assert class_ids[wrong] != class_ids[index]
      assert_caption_from(batch['wrong_caption'][row],
                          batch['wrong_caption_len'][row], source[wrong],
                          prepared.vocab)


def test_images_captions_and_attributes(config, prepared):
  loader = make_loader(config, prepared)
  source = prepared.source('train')
  (batch,) = take(loader, 1)
  signature = loader.signature()
  assert sorted(batch) == sorted(signature)
  for key, (shape, dtype) in signature.items():
    assert batch[key].shape == (GLOBAL_BATCH,) + shape, key
    assert batch[key].dtype == dtype, key
  assert {k for k in batch if k.startswith('image')} == {'image16', 'image32'}
  assert batch['image32'].dtype == np.uint8
  assert batch['attributes'].shape == (GLOBAL_BATCH, 5)
  for row in range(GLOBAL_BATCH):
    # Smaller stages are PIL bilinear downscales of the largest.
    largest = Image.fromarray(batch['image32'][row])
    expected = largest.resize((16, 16), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(batch['image16'][row], np.asarray(expected))
    record = source[batch['index'][row]]
    np.testing.assert_array_equal(batch['attributes'][row],
                                  record['attributes'])
    assert_caption_from(batch['caption'][row], batch['caption_len'][row],
                        record, prepared.vocab)
  # Shapes captions are longer than MAX_WORDS, so some were sub-sampled.
  assert (batch['caption_len'] == MAX_WORDS).any()


def test_unknown_word_policy_error_names_the_word(config, prepared):
  # The most frequent word (ids follow counts after '<end>' and '<unk>').
  word = prepared.vocab.itos[2]
  trimmed = text.Vocab([w for w in prepared.vocab.itos if w != word])
  data = config.data.copy_and_resolve_references()
  data.unknown_words = 'error'
  spec = pipeline.ExampleSpec.from_config(data)
  loader = pipeline.ExampleLoader(prepared.source('train'), trimmed,
                                  prepared.class_ids['train'], spec, seed=0,
                                  shuffle=False)
  with pytest.raises(errors.CaptionError, match=repr(word)):
    for k in range(NUM_TRAIN):
      loader(k)



def test_unknown_word_error_surfaces_through_tf_data(config, prepared):
  """A CaptionError raised inside tf.data reaches the caller as itself, naming the word."""
  config = config.copy_and_resolve_references()
  config.data.unknown_words = 'error'
  loader = loop.make_loader(config, prepared, 'train', shuffle=True)
  loader.vocab = text.Vocab([w for w in prepared.vocab.itos if w != 'circle'])
  with pytest.raises(errors.CaptionError, match='circle'):
    take(loader, STEPS_PER_EPOCH)


def test_keep_positions_serves_the_stored_image_unchanged(config, prepared):
  """No flip, no random crop: the positions the captions state stay true."""
  import io  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  source = prepared.source('train')

  def stored(index):
    return np.asarray(Image.open(io.BytesIO(source[index]['image'])).convert('RGB'))

  (batch,) = take(make_loader(config, prepared), 1)
  # The official augmentation moves (and flips) objects...
  assert any(not np.array_equal(batch['image32'][r], stored(batch['index'][r]))
             for r in range(GLOBAL_BATCH))
  config_base.keep_positions(config.data)
  (batch,) = take(make_loader(config, prepared), 1)
  # ...keep_positions serves each image as rendered.
  for row in range(GLOBAL_BATCH):
    np.testing.assert_array_equal(batch['image32'][row], stored(batch['index'][row]))
