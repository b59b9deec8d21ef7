"""Your own images: a folder with a captions.jsonl that lists them.

Each line of captions.jsonl describes one image:
  {"file": "birds/0001.png", "captions": ["a small red bird", ...],
   "label": 3, "split": "train"}
"file" is relative to the folder holding captions.jsonl; "label" (an integer
class, used to pick mismatched captions from another class) and "split"
('train' or 'test') are optional.

Decisions:
- Without "split", an image goes to the test split when a hash of its file
  name falls in the lowest TEST_PERCENT of buckets: stable across runs,
  machines and Python versions, and unchanged when other lines are added.
- Without "label" every image is its own class (class id = the line's
  position among the records); labels must be given on all lines or none, so
  that the two kinds of ids never collide.
- captions_per_image defaults to the smallest caption count of any image in
  the file (both splits, so train and test agree); images with more captions
  keep their first ones. When it is set, an image with fewer is an error.
- Fields other than the four above are rejected, so that a misspelt "split"
  or "label" is not silently ignored.
"""

import dataclasses
import hashlib
import json
import os
import posixpath
from typing import Any, Optional

from absl import logging

from t2ijax import errors
from t2ijax.data import text
from t2ijax.data.sources import base
from t2ijax.data.sources import common

NAME = 'folder'
CAPTIONS_FILE = 'captions.jsonl'
TEST_PERCENT = 10
FIELDS = ('file', 'captions', 'label', 'split')
EXAMPLE_LINE = (
    '{"file": "images/0001.png", "captions": ["a red bird on a branch"]}'
)

LAYOUT = f"""\
<manual_dir>/
  {CAPTIONS_FILE}                       one JSON object per line, e.g.
      {EXAMPLE_LINE}
      optional fields: "label": <int class id>, "split": "train" or "test"
  <any folders>/<image files>          the paths named by "file", relative to
                                       <manual_dir>; any format Pillow reads
"""

PREPARE_HINT = f"""\
Put your images under <manual_dir> and write <manual_dir>/{CAPTIONS_FILE} with
one line per image as shown above (at least one caption each; every image
needs as many captions as captions_per_image). Then run
  python -m t2ijax.data.prepare --source=folder --manual_dir=<manual_dir>
"""


@dataclasses.dataclass(frozen=True)
class Record:
  """One validated line of captions.jsonl."""

  line_number: int  # 1-based, for messages
  file: str  # normalised relative path, also the example's key
  captions: tuple[str, ...]
  label: Optional[int]
  split: Optional[str]


def hash_split(file: str) -> str:
  """The split of an image that has no "split" field: 'train' or 'test'."""
  digest = hashlib.sha256(file.encode('utf-8')).digest()
  bucket = int.from_bytes(digest[:8], 'big') % 100
  return 'test' if bucket < TEST_PERCENT else 'train'


def check_layout(manual_dir: str) -> None:
  """Raises DataLayoutError when captions.jsonl is missing."""
  missing = common.missing_paths(manual_dir, [CAPTIONS_FILE])
  common.raise_if_missing(NAME, manual_dir, missing, LAYOUT, PREPARE_HINT)


def _line_error(
    path: str, line_number: int, problem: str
) -> errors.DataLayoutError:
  return errors.DataLayoutError(
      f'{path}, line {line_number}: {problem}\n'
      f'Each line must be one JSON object like {EXAMPLE_LINE}, optionally with '
      '"label" (an integer) and "split" ("train" or "test").'
  )


def _parse_record(path: str, line_number: int, line: str) -> Record:
  """Validates one line of captions.jsonl."""
  try:
    fields: Any = json.loads(line)
  except json.JSONDecodeError as e:
    raise _line_error(
        path, line_number, f'not valid JSON ({e.msg}, column {e.colno}).'
    ) from None
  if not isinstance(fields, dict):
    raise _line_error(
        path,
        line_number,
        f'expected a JSON object, got {type(fields).__name__}.',
    )
  unknown = sorted(set(fields) - set(FIELDS))
  if unknown:
    raise _line_error(
        path,
        line_number,
        f'unknown field(s) {unknown}; allowed: {list(FIELDS)}.',
    )
  file = fields.get('file')
  if not isinstance(file, str) or not file.strip():
    raise _line_error(
        path, line_number, '"file" (the image path) is missing or not a string.'
    )
  captions = fields.get('captions')
  if (
      not isinstance(captions, list)
      or not captions
      or not all(isinstance(caption, str) for caption in captions)
  ):
    raise _line_error(
        path,
        line_number,
        f'"captions" must be a non-empty list of strings (for {file!r}).',
    )
  for index, caption in enumerate(captions):
    if not text.tokenize(caption):
      raise errors.CaptionError(
          f'{path}, line {line_number}: caption {index} of {file!r} '
          f"({caption!r}) has no words (only letters, digits and '_' count). "
          'Write a caption with at least one word, or remove it.'
      )
  label = fields.get('label')
  # bool is an int in Python, but true/false is surely not a class id.
  if label is not None and (
      not isinstance(label, int) or isinstance(label, bool)
  ):
    raise _line_error(
        path, line_number, f'"label" must be an integer, got {label!r}.'
    )
  split = fields.get('split')
  if split is not None and split not in common.SPLITS:
    raise _line_error(
        path, line_number, f'"split" must be "train" or "test", got {split!r}.'
    )
  # One spelling per image, so that './a.png' and 'a.png' are one key and
  # hash to one split on every operating system.
  normalised = posixpath.normpath(file.strip().replace('\\', '/'))
  return Record(
      line_number=line_number,
      file=normalised,
      captions=tuple(caption.strip() for caption in captions),
      label=label,
      split=split,
  )


def read_records(manual_dir: str) -> list[Record]:
  """Reads and validates every line of captions.jsonl (blank lines skipped)."""
  check_layout(manual_dir)
  path = os.path.join(manual_dir, CAPTIONS_FILE)
  records = []
  first_line_of = {}
  # utf-8-sig also reads files that an editor saved with a byte-order mark.
  with open(path, encoding='utf-8-sig', errors='strict') as f:
    try:
      lines = f.read().split('\n')
    except UnicodeDecodeError as e:
      raise errors.DataLayoutError(
          f'{path} is not UTF-8 text ({e}). Save it as UTF-8.'
      ) from None
  for line_number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    record = _parse_record(path, line_number, line)
    if record.file in first_line_of:
      raise _line_error(
          path,
          line_number,
          f'{record.file!r} is already listed on line '
          f'{first_line_of[record.file]}; list each image once, with all its '
          'captions.',
      )
    first_line_of[record.file] = line_number
    records.append(record)
  if not records:
    raise errors.DataLayoutError(f'{path} lists no images.\n{PREPARE_HINT}')
  labelled = [record.label is not None for record in records]
  if any(labelled) and not all(labelled):
    unlabelled = records[labelled.index(False)]
    raise _line_error(
        path,
        unlabelled.line_number,
        f'no "label" for {unlabelled.file!r}, but other lines have one; give '
        'every line a label, or none (then every image is its own class).',
    )
  return records


def _resolve_captions_per_image(
    path: str, records: list[Record], captions_per_image: Optional[int]
) -> int:
  """The configured count, checked against every image, or the minimum."""
  if captions_per_image is None:
    fewest = min(records, key=lambda record: len(record.captions))
    logging.info(
        '%s: using captions_per_image=%d, the fewest of any image (line %d,'
        ' %s).',
        path,
        len(fewest.captions),
        fewest.line_number,
        fewest.file,
    )
    return len(fewest.captions)
  too_few = [
      f'line {record.line_number}: {record.file} (has {len(record.captions)})'
      for record in records
      if len(record.captions) < captions_per_image
  ]
  if too_few:
    raise errors.DataLayoutError(
        f'{path}: {len(too_few)} image(s) have fewer than '
        f'captions_per_image={captions_per_image} captions:\n'
        f'{common.bullet_list(too_few)}\n'
        'Add captions to them, or lower captions_per_image (leave it unset to '
        'use the fewest any image has).'
    )
  return captions_per_image


def read_split(
    manual_dir: str,
    split: str,
    captions_per_image: Optional[int] = None,
    *,
    on_corrupt: str = 'error',
) -> common.SourceSplit:
  """Reads one split of a captioned image folder.

  Args:
    manual_dir: the folder holding captions.jsonl.
    split: 'train' or 'test'.
    captions_per_image: captions kept per image; None means the fewest any
      image in the file has.
    on_corrupt: 'error' or 'skip' (see common.drop_or_reject_corrupt).

  Returns:
    The split's examples in file order (vocab None: the folder has none).

  Raises:
    DataLayoutError: captions.jsonl or an image is missing, or a line is
      malformed; the message names the line and file.
    CaptionError: a caption has no words.
    CorruptImageError: an image does not decode and on_corrupt is 'error'.
  """
  common.check_arguments(split, captions_per_image, on_corrupt)
  path = os.path.join(manual_dir, CAPTIONS_FILE)
  records = read_records(manual_dir)
  captions_per_image = _resolve_captions_per_image(
      path, records, captions_per_image
  )
  chosen = [
      (position, record)
      for position, record in enumerate(records)
      if (record.split or hash_split(record.file)) == split
  ]
  if not chosen:
    raise errors.DataLayoutError(
        f'{path}: no image falls in the {split} split ({len(records)} images; '
        f'without a "split" field about {TEST_PERCENT}% go to test). Add '
        f'"split": "{split}" to some lines.'
    )
  missing = [
      f'line {record.line_number}: {os.path.join(manual_dir, record.file)}'
      for _, record in chosen
      if not os.path.isfile(os.path.join(manual_dir, record.file))
  ]
  if missing:
    raise errors.DataLayoutError(
        f'{path}: {len(missing)} image file(s) of the {split} split are '
        f'missing (paths are relative to {manual_dir}):\n'
        f'{common.bullet_list(missing)}'
    )
  examples = [
      base.RawExample(
          key=record.file,
          captions=record.captions[:captions_per_image],
          class_id=record.label if record.label is not None else position,
          image_path=os.path.join(manual_dir, record.file),
      )
      for position, record in chosen
  ]
  examples, num_skipped = common.drop_or_reject_corrupt(examples, on_corrupt)
  return common.SourceSplit(
      examples=examples,
      captions_per_image=captions_per_image,
      num_skipped=num_skipped,
  )
