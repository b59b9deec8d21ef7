"""Tiny fake CUB, COCO and folder data sets, laid out like the real ones.

Tests import this module as `fake_layouts` (pytest puts tests/ on sys.path).
Every writer returns a record of what it wrote, so a test can compare what a
reader returns with what is on disk without reading the files back itself.
"""

import dataclasses
import json
import os
import pickle
import random
import re
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

END_TOKEN = '<end>'
WORDS = (
    'a',
    'small',
    'large',
    'bird',
    'with',
    'red',
    'blue',
    'green',
    'wings',
    'and',
    'short',
    'beak',
    'this',
    'has',
    'white',
    'belly',
    'black',
    'tail',
)
# Odd, unequal sizes so that width/height mix-ups show.
IMAGE_SIZES = ((37, 29), (30, 41), (45, 45), (53, 31), (29, 47), (40, 33))

CUB_CLASSES = ('001.Red_bird', '002.Blue_bird', '003.Green_bird')
# Train and test classes are disjoint, as in the real split.
CUB_SPLIT_CLASSES = {'train': (1, 2), 'test': (3,)}
CUB_IMAGES_PER_CLASS = 2


@dataclasses.dataclass
class FakeData:
  """What a fake layout writer put on disk.

  Attributes:
    root: the manual_dir.
    keys: split -> keys in filenames.pickle (or jsonl) order.
    class_ids: split -> class id per key.
    image_paths: key -> image file.
    image_sizes: key -> (width, height).
    bboxes: key -> (x, y, w, h) as ints (CUB only).
    captions: key -> the usable captions, in order, as written.
    caption_ids: split -> word ids per caption, in the pickle's order.
    vocab_words: the pickle's vocabulary, id order ('<end>' first).
  """

  root: str
  keys: dict = dataclasses.field(default_factory=dict)
  class_ids: dict = dataclasses.field(default_factory=dict)
  image_paths: dict = dataclasses.field(default_factory=dict)
  image_sizes: dict = dataclasses.field(default_factory=dict)
  bboxes: dict = dataclasses.field(default_factory=dict)
  captions: dict = dataclasses.field(default_factory=dict)
  caption_ids: dict = dataclasses.field(default_factory=dict)
  vocab_words: list = dataclasses.field(default_factory=list)


def write_image(path: str, size: tuple[int, int], seed: int = 0) -> None:
  """Writes a noise image of size (width, height); format from the suffix."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  width, height = size
  pixels = np.random.default_rng(seed).integers(
      0, 256, (height, width, 3), dtype=np.uint8
  )
  Image.fromarray(pixels).save(path)


def write_garbage(path: str) -> None:
  """Overwrites a file with bytes no image decoder accepts."""
  with open(path, 'wb') as f:
    f.write(b'this is not an image' * 10)


def truncate(path: str) -> None:
  """Cuts a file to half its length, like an interrupted download."""
  with open(path, 'rb') as f:
    content = f.read()
  with open(path, 'wb') as f:
    f.write(content[: len(content) // 2])


def write_python2_pickle(path: str, value) -> None:
  """Pickles with protocol 2, the newest one Python 2 wrote."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    pickle.dump(value, f, protocol=2)


def _fake_captions(rng: random.Random, count: int) -> list[str]:
  """Captions with capitals and punctuation, so tokenizing has work to do."""
  captions = []
  for _ in range(count):
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
    captions.append(
        words[0].capitalize()
        + ' '
        + ' '.join(words[1:])
        + rng.choice(('.', '!', ''))
    )
  return captions


def _words(caption: str) -> list[str]:
  return re.findall(r'\w+', caption.lower())


def write_caption_file(path: str, captions: Sequence[str]) -> None:
  """Writes captions one per line, with an empty and a word-less line mixed in.

  The reader must skip both, as the official preprocessing does.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  lines = [captions[0], '', '  ...  '] + list(captions[1:]) + ['']
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines))


def write_captions_pickle(
    path: str, data: FakeData, captions_per_image: int, splits=('train', 'test')
) -> None:
  """Writes the official 4-list captions pickle for data.captions."""
  all_words = sorted(
      {
          w
          for key in data.captions
          for c in data.captions[key]
          for w in _words(c)
      }
  )
  # A scrambled id order, like the official hash-ordered vocabulary: readers
  # must use the file's ids, not rebuild them.
  random.Random(7).shuffle(all_words)
  data.vocab_words = [END_TOKEN] + all_words
  wordtoix = {word: index for index, word in enumerate(data.vocab_words)}
  ixtoword = dict(enumerate(data.vocab_words))
  per_split = []
  for split in splits:
    ids = [
        [wordtoix[word] for word in _words(caption)]
        for key in data.keys[split]
        for caption in data.captions[key][:captions_per_image]
    ]
    data.caption_ids[split] = ids
    per_split.append(ids)
  write_python2_pickle(path, [per_split[0], per_split[1], ixtoword, wordtoix])


def make_fake_cub(
    root: str,
    captions_per_image: int = 3,
    captions_pickle: Optional[str] = 'captions.pickle',
    text_files: bool = True,
    class_info: bool = True,
) -> FakeData:
  """Writes a 3-class CUB layout: 4 train images (2 classes), 2 test images.

  Args:
    root: the folder to fill (the manual_dir).
    captions_per_image: captions in the pickle; text files hold one more.
    captions_pickle: the pickle's file name, or None to write no pickle.
    text_files: write text/<key>.txt.
    class_info: write <split>/class_info.pickle.
  """
  data = FakeData(root=root)
  rng = random.Random(0)
  image_id = 0
  images_lines, box_lines = [], []
  for split, class_numbers in CUB_SPLIT_CLASSES.items():
    data.keys[split], data.class_ids[split] = [], []
    for class_number in class_numbers:
      class_dir = CUB_CLASSES[class_number - 1]
      for i in range(CUB_IMAGES_PER_CLASS):
        image_id += 1
        key = f'{class_dir}/{class_dir.split(".")[1]}_{i:04d}_{100 + image_id}'
        size = IMAGE_SIZES[image_id % len(IMAGE_SIZES)]
        path = os.path.join(root, 'CUB_200_2011', 'images', key + '.jpg')
        write_image(path, size, seed=image_id)
        width, height = size
        box = (image_id % 5, image_id % 3, width // 2 + image_id, height // 3)
        data.keys[split].append(key)
        data.class_ids[split].append(class_number)
        data.image_paths[key] = path
        data.image_sizes[key] = size
        data.bboxes[key] = box
        data.captions[key] = _fake_captions(rng, captions_per_image + 1)
        images_lines.append(f'{image_id} {key}.jpg')
        # Whole numbers written as floats, as in the real file.
        box_lines.append(f'{image_id} ' + ' '.join(f'{v:.1f}' for v in box))
    write_python2_pickle(
        os.path.join(root, split, 'filenames.pickle'), data.keys[split]
    )
    if class_info:
      write_python2_pickle(
          os.path.join(root, split, 'class_info.pickle'), data.class_ids[split]
      )
  # The box file in another order than images.txt: the reader must join by id.
  box_lines.reverse()
  with open(os.path.join(root, 'CUB_200_2011', 'images.txt'), 'w') as f:
    f.write('\n'.join(images_lines) + '\n')
  with open(os.path.join(root, 'CUB_200_2011', 'bounding_boxes.txt'), 'w') as f:
    f.write('\n'.join(box_lines) + '\n')
  if text_files:
    for key, captions in data.captions.items():
      write_caption_file(os.path.join(root, 'text', key + '.txt'), captions)
  if captions_pickle:
    write_captions_pickle(
        os.path.join(root, captions_pickle), data, captions_per_image
    )
  return data


def make_fake_coco(
    root: str,
    captions_per_image: int = 5,
    captions_pickle: Optional[str] = 'captions.pickle',
    text_files: bool = True,
    image_subdirs: bool = False,
) -> FakeData:
  """Writes a COCO layout: 3 train2014 and 2 val2014 images.

  Args:
    root: the folder to fill (the manual_dir).
    captions_per_image: captions in the pickle; text files hold one more.
    captions_pickle: the pickle's file name, or None to write no pickle.
    text_files: write text/<key>.txt.
    image_subdirs: put images in images/train2014/ and images/val2014/ (the
      DF-GAN layout) instead of images/.
  """
  data = FakeData(root=root)
  rng = random.Random(1)
  for split, image_set, numbers in (
      ('train', 'train2014', (9, 25, 30)),
      ('test', 'val2014', (42, 73)),
  ):
    data.keys[split] = [f'COCO_{image_set}_{number:012d}' for number in numbers]
    data.class_ids[split] = list(range(len(numbers)))
    for index, key in enumerate(data.keys[split]):
      subdir = image_set if image_subdirs else ''
      path = os.path.join(root, 'images', subdir, key + '.jpg')
      size = IMAGE_SIZES[(index + len(split)) % len(IMAGE_SIZES)]
      write_image(path, size, seed=numbers[index])
      data.image_paths[key] = path
      data.image_sizes[key] = size
      data.captions[key] = _fake_captions(rng, captions_per_image + 1)
      if text_files:
        write_caption_file(
            os.path.join(root, 'text', key + '.txt'), data.captions[key]
        )
    write_python2_pickle(
        os.path.join(root, split, 'filenames.pickle'), data.keys[split]
    )
  if captions_pickle:
    write_captions_pickle(
        os.path.join(root, captions_pickle), data, captions_per_image
    )
  return data


def make_fake_folder(
    root: str,
    lines: Sequence[Union[dict, str]],
    image_size: tuple[int, int] = (33, 27),
) -> str:
  """Writes captions.jsonl and a PNG for every "file" it names.

  Args:
    root: the folder to fill (the manual_dir).
    lines: dicts (written as JSON) or raw strings (written as they are, to
      test malformed lines).
    image_size: (width, height) of every image written.

  Returns:
    The path of captions.jsonl.
  """
  os.makedirs(root, exist_ok=True)
  for seed, line in enumerate(lines):
    if isinstance(line, dict) and isinstance(line.get('file'), str):
      write_image(os.path.join(root, line['file']), image_size, seed=seed)
  path = os.path.join(root, 'captions.jsonl')
  with open(path, 'w', encoding='utf-8') as f:
    for line in lines:
      f.write((json.dumps(line) if isinstance(line, dict) else line) + '\n')
  return path
