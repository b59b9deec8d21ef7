"""Tests of data preparation: raw layouts -> tfds files + side files -> loader.

Every test that prepares CUB or COCO uses its own data dir: their prepared
names do not depend on manual_dir (the real data sets are fixed), so two fake
layouts in one data dir would share one prepared data set.
"""

import os
import re

from tests import fake_layouts
import ml_collections
import numpy as np
from PIL import Image
import pytest

from t2ijax import config_base
from t2ijax import errors
from t2ijax.data import builder
from t2ijax.data import crop
from t2ijax.data import pipeline
from t2ijax.data import prepare
from t2ijax.data import text
from t2ijax.trainers import loop

CAPTIONS_PER_IMAGE = 3


def data_config(source, manual_dir, data_dir, **overrides):
  d = config_base.data_config(source)
  d.manual_dir = manual_dir
  d.data_dir = data_dir
  d.captions_per_image = CAPTIONS_PER_IMAGE
  d.image_sizes = (32,)
  d.num_parallel_calls = 2
  d.update(overrides)
  return d


def full_config(d, seed=0):
  """The part of a run's config that make_loader reads."""
  return ml_collections.ConfigDict({'seed': seed, 'data': d})


def first_batch(d, prepared, split, global_batch=2):
  loader = loop.make_loader(full_config(d), prepared, split, shuffle=False)
  return next(pipeline.batches(loader, global_batch, 0, 1,
                               num_parallel_calls=2))


def file_bytes(path):
  with open(path, 'rb') as f:
    return f.read()


def files_and_mtimes(prepared):
  paths = [os.path.join(folder, name)
           for folder, _, names in os.walk(prepared.builder.data_path)
           for name in names]
  return {path: os.stat(path).st_mtime_ns for path in paths}


# --- CUB --------------------------------------------------------------------


@pytest.fixture(scope='module')
def cub(tmp_path_factory):
  """(fake layout, data config, prepared) of one fake CUB, prepared once."""
  tmp = tmp_path_factory.mktemp('cub')
  fake = fake_layouts.make_fake_cub(str(tmp / 'birds'), CAPTIONS_PER_IMAGE)
  d = data_config('cub', fake.root, str(tmp / 'datasets'))
  return fake, d, prepare.prepare(d)


def test_cub_vocab_and_caption_ids_are_the_official_ones(cub):
  fake, _, prepared = cub
  # Same words under the same (scrambled) ids: pretrained encoders need them.
  assert prepared.vocab.itos == fake.vocab_words
  path = os.path.join(prepared.builder.data_path, builder.VOCAB_FILE)
  train_ids, test_ids, vocab = text.read_captions_pickle(path)
  assert vocab == prepared.vocab
  assert [ids.tolist() for ids in train_ids] == fake.caption_ids['train']
  assert [ids.tolist() for ids in test_ids] == fake.caption_ids['test']


@pytest.mark.parametrize('split', ['train', 'test'])
def test_cub_records_keep_order_classes_captions_boxes_and_bytes(cub, split):
  fake, _, prepared = cub
  assert prepared.class_ids[split].tolist() == fake.class_ids[split]
  source = prepared.source(split)
  assert len(source) == len(fake.keys[split])
  for index, key in enumerate(fake.keys[split]):
    record = source[index]
    assert record['key'].decode() == key
    assert int(record['class_id']) == prepared.class_ids[split][index]
    # The pickle's captions, i.e. the text's words joined by spaces.
    expected = [' '.join(text.tokenize(c))
                for c in fake.captions[key][:CAPTIONS_PER_IMAGE]]
    assert [c.decode() for c in record['captions']] == expected
    # The file as it was on disk: no re-encoding.
    assert record['image'] == file_bytes(fake.image_paths[key])
    np.testing.assert_array_equal(record['bbox'], fake.bboxes[key])


def window_offsets(big, small):
  """Every (top, left) at which `small` is a window of `big`."""
  size_y, size_x = small.shape[:2]
  return [(top, left)
          for top in range(big.shape[0] - size_y + 1)
          for left in range(big.shape[1] - size_x + 1)
          if np.array_equal(big[top:top + size_y, left:left + size_x], small)]


def test_cub_loader_crops_around_the_bird_box(cub):
  fake, d, prepared = cub
  d = d.copy_and_resolve_references()
  d.random_flip = False
  loader = loop.make_loader(full_config(d), prepared, 'train', shuffle=False)
  load_size = pipeline.ExampleSpec.from_config(d).load_size
  for k, key in enumerate(fake.keys['train']):
    image = loader(k)['image32']
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    original = Image.open(fake.image_paths[key]).convert('RGB')
    # The official order: 1.5x box crop, shorter side to load_size, then a
    # random crop; the loader's image must be one window of the scaled crop.
    scaled = crop.scale_shorter_side(
        crop.cub_bbox_crop(original, fake.bboxes[key]), load_size)
    assert window_offsets(np.asarray(scaled), image), key
    # And not a window of the uncropped image, so the box did matter.
    uncropped = crop.scale_shorter_side(original, load_size)
    assert not window_offsets(np.asarray(uncropped), image), key


def test_second_prepare_reuses_the_prepared_files(cub, monkeypatch):
  _, d, prepared = cub
  before = files_and_mtimes(prepared)

  def no_reading(data_config):
    raise AssertionError('prepare read the raw files again')

  monkeypatch.setattr(prepare, '_reader', no_reading)
  again = prepare.prepare(d)
  assert files_and_mtimes(again) == before
  assert again.vocab == prepared.vocab
  for split in builder.SPLITS:
    np.testing.assert_array_equal(again.class_ids[split],
                                  prepared.class_ids[split])


def test_prepare_finishes_a_data_set_whose_side_files_are_missing(tmp_path):
  # As after a crash between writing the tfds files and the side files.
  d = config_base.data_config('shapes')
  d.data_dir = str(tmp_path)
  d.captions_per_image = 2
  d.shapes.update(num_train=8, num_test=4, image_size=16)
  first = prepare.prepare(d)
  os.remove(os.path.join(first.builder.data_path, builder.VOCAB_FILE))
  with pytest.raises(errors.DataLayoutError):
    prepare.open_prepared(d)
  again = prepare.prepare(d)
  assert again.vocab == first.vocab
  np.testing.assert_array_equal(again.class_ids['train'],
                                first.class_ids['train'])


# --- COCO and folder ---------------------------------------------------------


def test_coco_prepares_and_loads(tmp_path):
  fake = fake_layouts.make_fake_coco(str(tmp_path / 'coco'), CAPTIONS_PER_IMAGE)
  d = data_config('coco', fake.root, str(tmp_path / 'datasets'))
  prepared = prepare.prepare(d)
  assert prepared.vocab.itos == fake.vocab_words
  for split in builder.SPLITS:
    # No class_info: every image is its own class.
    assert prepared.class_ids[split].tolist() == fake.class_ids[split]
    source = prepared.source(split)
    assert [source[i]['key'].decode() for i in range(len(source))] == (
        fake.keys[split])
    # No bird box: the -1s that turn the box crop off.
    np.testing.assert_array_equal(source[0]['bbox'], [-1, -1, -1, -1])
  batch = first_batch(d, prepared, 'test')
  assert batch['image32'].shape == (2, 32, 32, 3)
  assert batch['index'].tolist() == [0, 1]
  assert (batch['caption_len'] > 0).all()


def test_folder_without_labels_gets_a_class_per_image(tmp_path):
  root = str(tmp_path / 'mine')
  words = fake_layouts.WORDS
  lines = [{'file': f'pics/{i}.png',
            'captions': [f'{words[i]} {words[i + 1]} bird', f'a {words[i]}'],
            'split': 'train' if i < 4 else 'test'}
           for i in range(6)]
  fake_layouts.make_fake_folder(root, lines)
  d = data_config('folder', root, str(tmp_path / 'datasets'),
                  captions_per_image=2)
  prepared = prepare.prepare(d)
  # The class id is the line's position among all records.
  assert prepared.class_ids['train'].tolist() == [0, 1, 2, 3]
  assert prepared.class_ids['test'].tolist() == [4, 5]
  source = prepared.source('train')
  assert source[2]['image'] == file_bytes(os.path.join(root, 'pics/2.png'))
  # A vocabulary built from the captions holds all their words.
  for line in lines:
    for caption in line['captions']:
      assert all(word in prepared.vocab for word in text.tokenize(caption))
  batch = first_batch(d, prepared, 'train')
  assert batch['image32'].shape == (2, 32, 32, 3)
  assert batch['class_id'].tolist() == [0, 1]


# --- errors -----------------------------------------------------------------


def test_cub_without_manual_dir_shows_layout_and_command(tmp_path):
  d = data_config('cub', '', str(tmp_path))
  with pytest.raises(errors.DataLayoutError) as error:
    prepare.prepare(d)
  message = str(error.value)
  assert 'CUB_200_2011' in message
  assert 'python -m t2ijax.data.prepare' in message


@pytest.mark.parametrize('missing', ['bounding_boxes.txt', 'image'])
def test_cub_missing_file_is_named(tmp_path, missing):
  fake = fake_layouts.make_fake_cub(str(tmp_path / 'birds'), CAPTIONS_PER_IMAGE)
  if missing == 'image':
    path = fake.image_paths[fake.keys['train'][1]]
  else:
    path = os.path.join(fake.root, 'CUB_200_2011', missing)
  os.remove(path)
  d = data_config('cub', fake.root, str(tmp_path / 'datasets'))
  with pytest.raises(errors.DataLayoutError, match=re.escape(path)):
    prepare.prepare(d)


def test_corrupt_image_is_an_error_or_skipped(tmp_path):
  fake = fake_layouts.make_fake_cub(str(tmp_path / 'birds'), CAPTIONS_PER_IMAGE)
  bad_key = fake.keys['train'][1]
  fake_layouts.write_garbage(fake.image_paths[bad_key])
  data_dir = str(tmp_path / 'datasets')
  d = data_config('cub', fake.root, data_dir, on_corrupt_image='error')
  with pytest.raises(errors.CorruptImageError) as error:
    prepare.prepare(d)
  assert fake.image_paths[bad_key] in str(error.value)

  d = data_config('cub', fake.root, data_dir, on_corrupt_image='skip')
  prepared = prepare.prepare(d)
  source = prepared.source('train')
  keys = [source[i]['key'].decode() for i in range(len(source))]
  assert keys == [k for k in fake.keys['train'] if k != bad_key]
  assert prepared.class_ids['train'].tolist() == [1, 2, 2]
  assert len(prepared.source('test')) == len(fake.keys['test'])


def test_open_unprepared_names_the_prepare_command(tmp_path):
  d = data_config('cub', '', str(tmp_path))
  with pytest.raises(errors.DataLayoutError,
                     match='python -m t2ijax.data.prepare --source=cub'):
    prepare.open_prepared(d)
