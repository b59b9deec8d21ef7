"""Tests of the raw data readers (CUB, COCO, folder) and the CUB crop."""

import logging
import os
import pickle
import shutil

from tests import fake_layouts
import numpy as np
from PIL import Image
import pytest

from t2ijax import errors
from t2ijax.data import crop
from t2ijax.data import text
from t2ijax.data.sources import coco
from t2ijax.data.sources import cub
from t2ijax.data.sources import folder

# --- crop -------------------------------------------------------------------


@pytest.mark.parametrize(
    'bbox, expected_box',
    [
        # r = int(0.75*30) = 22, cx = int(50/2) = 25, cy = int(56/2) = 28.
        ((10, 20, 30, 16), (3, 6, 47, 50)),
        # r = int(0.75*28) = 21, cx = int(165/2) = 82, cy = int(128/2) = 64:
        # clipped at the right and bottom, so not square.
        ((70, 50, 25, 28), (61, 43, 100, 80)),
        # r = int(7.5) = 7, cx = int(14/2) = 7, cy = int(15/2) = 7: clipped
        # at 0.
        ((2, 3, 10, 9), (0, 0, 14, 14)),
    ],
)
def test_cub_bbox_crop_matches_hand_computed_box(bbox, expected_box):
  width, height = 100, 80
  assert crop.cub_bbox_box(width, height, bbox) == expected_box
  # The prepared data set stores boxes as float32; same box.
  float_box = np.asarray(bbox, np.float32)
  assert crop.cub_bbox_box(width, height, float_box) == expected_box
  pixels = (
      np.arange(height * width * 3, dtype=np.uint32).reshape(height, width, 3)
      % 251
  )
  pixels = pixels.astype(np.uint8)
  left, top, right, bottom = expected_box
  cropped_array = crop.cub_bbox_crop(pixels, bbox)
  np.testing.assert_array_equal(cropped_array, pixels[top:bottom, left:right])
  cropped_image = crop.cub_bbox_crop(Image.fromarray(pixels), bbox)
  assert isinstance(cropped_image, Image.Image)
  np.testing.assert_array_equal(np.asarray(cropped_image), cropped_array)


@pytest.mark.parametrize(
    'size_in, size, size_out',
    [
        ((500, 375), 304, (405, 304)),  # 304*500/375 = 405.33
        ((375, 500), 304, (304, 405)),
        ((101, 100), 64, (64, 64)),  # 64.64 truncates; rounding would give 65
        ((80, 80), 64, (64, 64)),
        ((20, 30), 64, (64, 96)),  # upscaling too
    ],
)
def test_scale_shorter_side_truncates_the_longer_side(size_in, size, size_out):
  assert crop.shorter_side_size(*size_in, size) == size_out
  image = Image.new('RGB', size_in, (10, 20, 30))
  assert crop.scale_shorter_side(image, size).size == size_out


def test_scale_shorter_side_leaves_an_image_of_the_right_size_alone():
  image = Image.new('RGB', (64, 90))
  assert crop.scale_shorter_side(image, 64) is image


def test_scale_shorter_side_is_pil_bilinear():
  pixels = np.random.default_rng(0).integers(
      0, 256, (30, 45, 3), dtype=np.uint8
  )
  image = Image.fromarray(pixels)
  expected = image.resize((96, 64), Image.Resampling.BILINEAR)
  np.testing.assert_array_equal(
      np.asarray(crop.scale_shorter_side(image, 64)), np.asarray(expected)
  )


# --- CUB --------------------------------------------------------------------


@pytest.fixture
def fake_cub(tmp_path):
  return fake_layouts.make_fake_cub(str(tmp_path / 'birds'))


def ids_of(caption, vocab):
  return [vocab.stoi[word] for word in text.tokenize(caption)]


@pytest.mark.parametrize('split', ['train', 'test'])
def test_cub_reads_keys_classes_boxes_and_pickle_captions(fake_cub, split):
  result = cub.read_split(fake_cub.root, split, 3)
  keys = [example.key for example in result.examples]
  assert keys == fake_cub.keys[split]
  assert [e.class_id for e in result.examples] == fake_cub.class_ids[split]
  assert [tuple(e.bbox) for e in result.examples] == [
      fake_cub.bboxes[k] for k in keys
  ]
  assert [e.image_path for e in result.examples] == [
      fake_cub.image_paths[k] for k in keys
  ]
  assert result.vocab.itos == fake_cub.vocab_words
  assert result.captions_per_image == 3
  assert result.num_skipped == 0
  # Caption j of image i is pickle entry i*3 + j, and its text tokenizes back
  # to exactly the released ids.
  round_trip = [
      ids_of(c, result.vocab) for e in result.examples for c in e.captions
  ]
  assert round_trip == fake_cub.caption_ids[split]


def test_cub_without_class_info_numbers_images(tmp_path):
  data = fake_layouts.make_fake_cub(str(tmp_path), class_info=False)
  result = cub.read_split(data.root, 'train', 3)
  assert [e.class_id for e in result.examples] == list(
      range(len(data.keys['train']))
  )


def test_cub_reads_the_dfgan_pickle_name(tmp_path):
  data = fake_layouts.make_fake_cub(
      str(tmp_path), captions_pickle='captions_DAMSM.pickle', text_files=False
  )
  result = cub.read_split(data.root, 'test', 3)
  assert result.vocab.itos == data.vocab_words


def test_cub_reads_text_files_without_a_pickle(tmp_path):
  data = fake_layouts.make_fake_cub(str(tmp_path), captions_pickle=None)
  result = cub.read_split(data.root, 'train', 3)
  assert result.vocab is None
  for example in result.examples:
    # Empty and word-less lines skipped; the 4th caption is not used.
    assert list(example.captions) == data.captions[example.key][:3]


def test_cub_pickle_with_other_captions_per_image_is_an_error(fake_cub):
  with pytest.raises(errors.DataLayoutError, match='captions_per_image=10'):
    cub.read_split(fake_cub.root, 'train', 10)


def test_cub_ignores_extra_pickle_captions_at_the_end(fake_cub, caplog):
  path = os.path.join(fake_cub.root, 'captions.pickle')
  with open(path, 'rb') as f:
    train, test, ixtoword, wordtoix = pickle.load(f)
  fake_layouts.write_python2_pickle(
      path, [train + [train[0]], test, ixtoword, wordtoix]
  )
  with caplog.at_level(logging.WARNING):
    result = cub.read_split(fake_cub.root, 'train', 3)
  assert 'not used' in caplog.text
  round_trip = [
      ids_of(c, result.vocab) for e in result.examples for c in e.captions
  ]
  assert round_trip == fake_cub.caption_ids['train']


@pytest.mark.parametrize(
    'relative_path',
    [
        'CUB_200_2011/images.txt',
        'CUB_200_2011/bounding_boxes.txt',
        'CUB_200_2011/images',
        'train/filenames.pickle',
        'test/filenames.pickle',
    ],
)
def test_cub_missing_layout_parts_are_named(fake_cub, relative_path):
  path = os.path.join(fake_cub.root, relative_path)
  if os.path.isdir(path):
    shutil.rmtree(path)
  else:
    os.remove(path)
  with pytest.raises(errors.DataLayoutError) as error:
    cub.check_layout(fake_cub.root)
  message = str(error.value)
  assert os.path.normpath(path) in message
  assert 'Expected layout' in message and 'bounding_boxes.txt' in message
  assert 'python -m t2ijax.data.prepare --source=cub' in message


def test_cub_names_every_missing_part_at_once(tmp_path):
  with pytest.raises(errors.DataLayoutError) as error:
    cub.read_split(str(tmp_path), 'train', 3)
  message = str(error.value)
  for relative_path in (
      'CUB_200_2011/images.txt',
      'train/filenames.pickle',
      'captions.pickle',
  ):
    assert os.path.join(str(tmp_path), relative_path) in message


def test_cub_missing_captions_are_named(tmp_path):
  data = fake_layouts.make_fake_cub(
      str(tmp_path), captions_pickle=None, text_files=False
  )
  with pytest.raises(errors.DataLayoutError) as error:
    cub.check_layout(data.root)
  assert os.path.join(data.root, 'captions.pickle') in str(error.value)
  assert 'text/' in str(error.value)


def test_cub_missing_image_is_named(fake_cub):
  path = fake_cub.image_paths[fake_cub.keys['test'][1]]
  os.remove(path)
  with pytest.raises(errors.DataLayoutError, match='missing') as error:
    cub.read_split(fake_cub.root, 'test', 3)
  assert path in str(error.value)
  cub.read_split(fake_cub.root, 'train', 3)  # The other split is unaffected.


def test_cub_missing_and_short_text_files_are_named(tmp_path):
  data = fake_layouts.make_fake_cub(str(tmp_path), captions_pickle=None)
  first, second = data.keys['train'][:2]
  os.remove(os.path.join(data.root, 'text', first + '.txt'))
  with pytest.raises(errors.DataLayoutError) as error:
    cub.read_split(data.root, 'train', 3)
  assert os.path.join(data.root, 'text', first + '.txt') in str(error.value)

  fake_layouts.write_caption_file(
      os.path.join(data.root, 'text', first + '.txt'), ['one bird']
  )
  with pytest.raises(errors.DataLayoutError) as error:
    cub.read_split(data.root, 'train', 3)
  message = str(error.value)
  assert os.path.join(data.root, 'text', first + '.txt') + ' (has 1)' in message
  assert second not in message
  assert 'captions_per_image=3' in message


def test_cub_image_missing_from_images_txt_is_named(fake_cub):
  images_txt = os.path.join(fake_cub.root, 'CUB_200_2011', 'images.txt')
  with open(images_txt) as f:
    lines = f.read().splitlines()
  with open(images_txt, 'w') as f:
    f.write('\n'.join(lines[1:]))
  with pytest.raises(errors.DataLayoutError) as error:
    cub.read_split(fake_cub.root, 'train', 3)
  assert fake_cub.keys['train'][0] in str(error.value)
  assert images_txt in str(error.value)


def test_cub_image_without_a_box_is_named(fake_cub):
  boxes_txt = os.path.join(fake_cub.root, 'CUB_200_2011', 'bounding_boxes.txt')
  with open(boxes_txt) as f:
    lines = [
        line for line in f.read().splitlines() if not line.startswith('6 ')
    ]
  with open(boxes_txt, 'w') as f:
    f.write('\n'.join(lines))
  cub.read_split(fake_cub.root, 'train', 3)  # Image 6 is a test image.
  with pytest.raises(errors.DataLayoutError) as error:
    cub.read_split(fake_cub.root, 'test', 3)
  assert fake_cub.keys['test'][1] in str(error.value)
  assert boxes_txt in str(error.value)


def test_cub_class_info_of_wrong_length_is_an_error(fake_cub):
  path = os.path.join(fake_cub.root, 'train', 'class_info.pickle')
  fake_layouts.write_python2_pickle(path, [1, 2])
  with pytest.raises(errors.DataLayoutError) as error:
    cub.read_split(fake_cub.root, 'train', 3)
  assert path in str(error.value)


def test_cub_damaged_filenames_pickle_is_named(fake_cub):
  path = os.path.join(fake_cub.root, 'test', 'filenames.pickle')
  fake_layouts.write_garbage(path)
  with pytest.raises(errors.DataLayoutError) as error:
    cub.read_split(fake_cub.root, 'test', 3)
  assert path in str(error.value)


@pytest.mark.parametrize(
    'damage', [fake_layouts.write_garbage, fake_layouts.truncate]
)
def test_corrupt_image_is_an_error_that_says_how_to_skip(fake_cub, damage):
  path = fake_cub.image_paths[fake_cub.keys['train'][2]]
  damage(path)
  with pytest.raises(errors.CorruptImageError) as error:
    cub.read_split(fake_cub.root, 'train', 3)
  assert path in str(error.value)
  assert 'data.on_corrupt_image=skip' in str(error.value)


def test_skip_policy_drops_and_counts_corrupt_images(fake_cub, caplog):
  bad_key = fake_cub.keys['train'][1]
  fake_layouts.write_garbage(fake_cub.image_paths[bad_key])
  with caplog.at_level(logging.WARNING):
    result = cub.read_split(fake_cub.root, 'train', 3, on_corrupt='skip')
  assert result.num_skipped == 1
  assert [e.key for e in result.examples] == [
      k for k in fake_cub.keys['train'] if k != bad_key
  ]
  assert fake_cub.image_paths[bad_key] in caplog.text
  # The kept examples keep their own captions and classes.
  kept = {e.key: e for e in result.examples}
  for index, key in enumerate(fake_cub.keys['train']):
    if key != bad_key:
      assert kept[key].class_id == fake_cub.class_ids['train'][index]


def test_bad_arguments_are_rejected(fake_cub):
  with pytest.raises(ValueError, match='split'):
    cub.read_split(fake_cub.root, 'val', 3)
  with pytest.raises(errors.ConfigError, match='data.on_corrupt_image'):
    cub.read_split(fake_cub.root, 'train', 3, on_corrupt='ignore')
  with pytest.raises(errors.ConfigError, match='data.captions_per_image'):
    folder.read_split(fake_cub.root, 'train', 0)


# --- COCO -------------------------------------------------------------------


@pytest.mark.parametrize('image_subdirs', [False, True])
def test_coco_reads_keys_and_pickle_captions(tmp_path, image_subdirs):
  data = fake_layouts.make_fake_coco(str(tmp_path), image_subdirs=image_subdirs)
  for split in ('train', 'test'):
    result = coco.read_split(data.root, split)
    assert result.captions_per_image == 5
    assert [e.key for e in result.examples] == data.keys[split]
    assert [e.class_id for e in result.examples] == list(
        range(len(data.keys[split]))
    )
    assert [e.image_path for e in result.examples] == [
        data.image_paths[k] for k in data.keys[split]
    ]
    assert all(e.bbox is None for e in result.examples)
    round_trip = [
        ids_of(c, result.vocab) for e in result.examples for c in e.captions
    ]
    assert round_trip == data.caption_ids[split]


def test_coco_reads_text_files_without_a_pickle(tmp_path):
  data = fake_layouts.make_fake_coco(str(tmp_path), captions_pickle=None)
  result = coco.read_split(data.root, 'test')
  assert result.vocab is None
  assert [list(e.captions) for e in result.examples] == [
      data.captions[k][:5] for k in data.keys['test']
  ]


def test_coco_missing_parts_are_named(tmp_path):
  data = fake_layouts.make_fake_coco(str(tmp_path))
  missing_image = data.image_paths[data.keys['test'][0]]
  os.remove(missing_image)
  with pytest.raises(errors.DataLayoutError) as error:
    coco.read_split(data.root, 'test')
  assert missing_image in str(error.value)

  os.remove(os.path.join(data.root, 'train', 'filenames.pickle'))
  with pytest.raises(errors.DataLayoutError) as error:
    coco.check_layout(data.root)
  assert os.path.join(data.root, 'train', 'filenames.pickle') in str(
      error.value
  )
  assert 'python -m t2ijax.data.prepare --source=coco' in str(error.value)


# --- folder -----------------------------------------------------------------


def folder_lines(count, **extra):
  return [
      {
          'file': f'img/{i:03d}.png',
          'captions': [f'a bird number {i}', f'picture {i}'],
          **extra,
      }
      for i in range(count)
  ]


def test_hash_split_is_stable_and_about_ten_percent():
  names = [f'photos/{i:05d}.jpg' for i in range(400)]
  splits = [folder.hash_split(name) for name in names]
  assert splits == [folder.hash_split(name) for name in names]
  assert 0.05 < splits.count('test') / len(names) < 0.15
  # Pinned: changing the hash would move users' images between splits.
  pinned = [
      i for i in range(40) if folder.hash_split(f'img/{i:03d}.png') == 'test'
  ]
  assert pinned == [1, 9, 12, 15, 17, 20, 22]


def test_folder_splits_partition_the_file_deterministically(tmp_path):
  root = str(tmp_path)
  lines = folder_lines(40)
  fake_layouts.make_fake_folder(root, lines)
  train = folder.read_split(root, 'train')
  test = folder.read_split(root, 'test')
  train_keys = [e.key for e in train.examples]
  test_keys = [e.key for e in test.examples]
  assert sorted(train_keys + test_keys) == sorted(
      line['file'] for line in lines
  )
  assert test_keys == [
      line['file']
      for line in lines
      if folder.hash_split(line['file']) == 'test'
  ]
  assert test_keys and train_keys
  assert [e.key for e in folder.read_split(root, 'test').examples] == test_keys
  # Without labels every image is its own class: its position in the file.
  positions = {line['file']: index for index, line in enumerate(lines)}
  assert [e.class_id for e in train.examples] == [
      positions[k] for k in train_keys
  ]
  assert train.vocab is None and train.captions_per_image == 2


def test_folder_explicit_split_label_and_minimum_captions(tmp_path):
  root = str(tmp_path)
  lines = [
      {
          'file': 'a.png',
          'captions': ['one', 'two', 'three'],
          'label': 4,
          'split': 'test',
      },
      {
          'file': './b.png',
          'captions': ['four', 'five'],
          'label': 1,
          'split': 'train',
      },
      {
          'file': 'c.png',
          'captions': ['six', 'seven', 'eight'],
          'label': 4,
          'split': 'train',
      },
  ]
  fake_layouts.make_fake_folder(root, lines)
  train = folder.read_split(root, 'train')
  assert [e.key for e in train.examples] == ['b.png', 'c.png']
  assert [e.class_id for e in train.examples] == [1, 4]
  assert train.captions_per_image == 2
  assert [list(e.captions) for e in train.examples] == [
      ['four', 'five'],
      ['six', 'seven'],
  ]
  test = folder.read_split(root, 'test')
  assert [list(e.captions) for e in test.examples] == [['one', 'two']]
  # The count is checked over the whole file, so both splits agree on it.
  for split in ('train', 'test'):
    with pytest.raises(errors.DataLayoutError) as error:
      folder.read_split(root, split, 3)
    assert 'line 2: b.png (has 2)' in str(error.value)


@pytest.mark.parametrize(
    'bad_line, error_type, expected',
    [
        (
            '{"file": "x.png", "captions": ["a bird"]',
            errors.DataLayoutError,
            'not valid JSON',
        ),
        ('["x.png"]', errors.DataLayoutError, 'JSON object'),
        ('{"captions": ["a bird"]}', errors.DataLayoutError, '"file"'),
        ('{"file": "x.png"}', errors.DataLayoutError, '"captions"'),
        (
            '{"file": "x.png", "captions": []}',
            errors.DataLayoutError,
            '"captions"',
        ),
        (
            '{"file": "x.png", "captions": ["a bird", " ,. "]}',
            errors.CaptionError,
            'no words',
        ),
        (
            '{"file": "x.png", "captions": ["a bird"], "lable": 3}',
            errors.DataLayoutError,
            'lable',
        ),
        (
            '{"file": "x.png", "captions": ["a bird"], "split": "val"}',
            errors.DataLayoutError,
            'val',
        ),
        (
            '{"file": "x.png", "captions": ["a bird"], "label": "3"}',
            errors.DataLayoutError,
            'label',
        ),
        (
            '{"file": "img/000.png", "captions": ["a bird"]}',
            errors.DataLayoutError,
            'line 1',
        ),
    ],
)
def test_folder_bad_line_is_reported_with_its_line_number(
    tmp_path, bad_line, error_type, expected
):
  root = str(tmp_path)
  path = fake_layouts.make_fake_folder(root, folder_lines(2) + ['', bad_line])
  with pytest.raises(error_type) as error:
    folder.read_split(root, 'train')
  message = str(error.value)
  assert f'{path}, line 4' in message  # Blank line 3 still counts.
  assert expected in message


def test_folder_mixed_labels_are_an_error(tmp_path):
  root = str(tmp_path)
  lines = folder_lines(3, label=1)
  del lines[2]['label']
  fake_layouts.make_fake_folder(root, lines)
  with pytest.raises(errors.DataLayoutError, match='line 3'):
    folder.read_split(root, 'train')


def test_folder_missing_file_and_image_are_named(tmp_path):
  root = str(tmp_path)
  with pytest.raises(errors.DataLayoutError) as error:
    folder.read_split(root, 'train')
  assert os.path.join(root, 'captions.jsonl') in str(error.value)
  assert 'Expected layout' in str(error.value)

  lines = folder_lines(3, split='train')
  fake_layouts.make_fake_folder(root, lines)
  os.remove(os.path.join(root, 'img', '001.png'))
  with pytest.raises(errors.DataLayoutError) as error:
    folder.read_split(root, 'train')
  assert 'line 2: ' + os.path.join(root, 'img/001.png') in str(error.value)


def test_folder_empty_split_says_how_to_fill_it(tmp_path):
  root = str(tmp_path)
  fake_layouts.make_fake_folder(root, folder_lines(3, split='train'))
  with pytest.raises(errors.DataLayoutError, match='"split": "test"'):
    folder.read_split(root, 'test')


def test_folder_skips_corrupt_images_when_asked(tmp_path):
  root = str(tmp_path)
  fake_layouts.make_fake_folder(root, folder_lines(4, split='train'))
  fake_layouts.write_garbage(os.path.join(root, 'img', '002.png'))
  with pytest.raises(errors.CorruptImageError, match='002.png'):
    folder.read_split(root, 'train')
  result = folder.read_split(root, 'train', on_corrupt='skip')
  assert result.num_skipped == 1
  assert [e.key for e in result.examples] == [
      'img/000.png',
      'img/001.png',
      'img/003.png',
  ]
