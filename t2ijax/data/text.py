"""Captions as word ids: AttnGAN tokenizer, vocabulary and `captions.pickle`.

Every model of the AttnGAN family (AttnGAN, DM-GAN, MirrorGAN) reads captions
the same way: a fixed tokenizer, a word <-> id table in which id 0 ('<end>') is
padding only, and a pickled list `[train_captions, test_captions, ixtoword,
wordtoix]` holding the encoded captions of a data set. Pretrained text encoders
are tied to the exact ids of the released pickle, so this module reads and
writes that file as it is and never renumbers a vocabulary it did not build.
"""

import collections
import hashlib
import itertools
import json
import os
import pickle
import re
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from t2ijax import errors

END_TOKEN = '<end>'
UNK_TOKEN = '<unk>'
PAD_ID = 0  # The id of END_TOKEN; pads captions and never occurs inside one.

UNKNOWN_POLICIES = ('skip', 'unk', 'error')

_WORD_PATTERN = re.compile(r'\w+')
# Some CUB caption files contain this pair where a character was lost in a
# bad encoding round trip; the official preprocessing turns it into a space.
_REPLACEMENT_PAIR = '\ufffd\ufffd'
# Longest caption text quoted in an error message.
_QUOTE_LIMIT = 200

PathLike = Union[str, os.PathLike]


def tokenize(text: str) -> list[str]:
  """Splits a caption into words exactly as the AttnGAN preprocessing does.

  The steps: replace U+FFFD U+FFFD by a space, lower-case, take the runs of
  `\\w` characters (NLTK's `RegexpTokenizer(r'\\w+')` is `re.findall`), drop the
  non-ASCII characters of each run and drop runs left empty. Digits and '_'
  are word characters, so they stay; 'café' becomes 'caf'.

  Args:
    text: one caption.

  Returns:
    The words, in order; an empty list when the caption has none.
  """
  text = text.replace(_REPLACEMENT_PAIR, ' ').lower()
  words = []
  for run in _WORD_PATTERN.findall(text):
    word = run.encode('ascii', 'ignore').decode('ascii')
    if word:
      words.append(word)
  return words


def _quote(text: str) -> str:
  """The caption as it should appear in an error message: quoted, bounded."""
  if len(text) > _QUOTE_LIMIT:
    text = text[:_QUOTE_LIMIT] + '...'
  return repr(text)


class Vocab:
  """A word <-> id table in which id 0 is '<end>', the padding id.

  Attributes:
    itos: the words in id order; `itos[0] == '<end>'`. Treat as read-only.
    stoi: word -> id, the inverse of `itos`.
  """

  def __init__(self, itos: Sequence[str]):
    """Makes a vocabulary from its words in id order.

    Args:
      itos: distinct non-empty strings, the first one '<end>'.

    Raises:
      DataLayoutError: the list breaks one of those rules.
    """
    itos = list(itos)
    if not itos or itos[0] != END_TOKEN:
      first = repr(itos[0]) if itos else 'nothing'
      raise errors.DataLayoutError(
          f'A vocabulary must start with {END_TOKEN!r} (id {PAD_ID}, the '
          f'padding id), but it starts with {first}. Use the vocabulary file '
          'or captions.pickle that came with the data or checkpoint.')
    bad = [word for word in itos if not isinstance(word, str) or not word]
    if bad:
      raise errors.DataLayoutError(
          f'A vocabulary holds only non-empty strings, but it has {bad[:5]!r}. '
          'The vocabulary file is damaged; restore it from the data set or '
          'checkpoint it came with.')
    counts = collections.Counter(itos)
    repeated = sorted(word for word, count in counts.items() if count > 1)
    if repeated:
      raise errors.DataLayoutError(
          f'A vocabulary must list each word once, but {repeated[:10]!r} '
          'occur more than once. The vocabulary file is damaged; restore it '
          'from the data set or checkpoint it came with.')
    self.itos = itos
    self.stoi = {word: index for index, word in enumerate(itos)}

  def __len__(self) -> int:
    """n_words: the size of the embedding table this vocabulary feeds."""
    return len(self.itos)

  def __contains__(self, word: str) -> bool:
    return word in self.stoi

  def __eq__(self, other) -> bool:
    if not isinstance(other, Vocab):
      return NotImplemented
    return self.itos == other.itos

  __hash__ = None  # Mutable list inside; equality is by content.

  def __repr__(self) -> str:
    return f'Vocab(n_words={len(self)}, fingerprint={self.fingerprint()!r})'

  @property
  def unk_id(self) -> Optional[int]:
    """The id of '<unk>', or None when this vocabulary has none."""
    return self.stoi.get(UNK_TOKEN)

  def encode(self, text: str, unknown: str = 'skip') -> np.ndarray:
    """Turns a caption into word ids.

    Args:
      text: the caption.
      unknown: what to do with words the vocabulary lacks. 'skip' drops them,
        which is what the official code does (its lookup ignores missing
        words). 'unk' maps them to '<unk>' and needs a vocabulary that has it.
        'error' raises.

    Returns:
      int32 ids of shape (number of words,), never containing 0.

    Raises:
      ConfigError: `unknown` is not a policy, or is 'unk' for a vocabulary
        without '<unk>'.
      CaptionError: the caption has no words, has none the vocabulary knows,
        or has unknown words under the 'error' policy.
    """
    if unknown not in UNKNOWN_POLICIES:
      raise errors.ConfigError(
          f'Unknown-word policy {unknown!r} is not one of {UNKNOWN_POLICIES}.')
    if unknown == 'unk' and self.unk_id is None:
      raise errors.ConfigError(
          f"Unknown-word policy 'unk' needs a vocabulary containing "
          f"{UNK_TOKEN!r}, and this one ({len(self)} words) has none (the "
          "official vocabularies do not). Use unknown='skip' or 'error'.")
    words = tokenize(text)
    if not words:
      raise errors.CaptionError(
          f'Caption {_quote(text)} has no words (only letters, digits and '
          "'_' count). Write a caption with at least one word.")
    missing = [word for word in words if word not in self.stoi]
    if missing and unknown == 'error':
      distinct = ', '.join(repr(word) for word in dict.fromkeys(missing))
      raise errors.CaptionError(
          f'Caption {_quote(text)} has words not in the vocabulary: '
          f'{distinct}. Rephrase it with words from the training captions, or '
          "encode with unknown='skip' to drop them as the official code does.")
    if unknown == 'unk':
      ids = [self.stoi.get(word, self.unk_id) for word in words]
    else:
      ids = [self.stoi[word] for word in words if word in self.stoi]
    if not ids:
      raise errors.CaptionError(
          f'None of the words of caption {_quote(text)} are in the vocabulary '
          f'({len(self)} words), so nothing is left to encode. Rephrase it '
          'with words from the training captions.')
    return np.asarray(ids, dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    """Turns word ids back into text: the words up to the first 0, spaced.

    Args:
      ids: a 1-D sequence of ids, padded or not.

    Raises:
      CaptionError: an id is outside 0..len(self)-1.
    """
    words = []
    for index in np.asarray(ids).reshape(-1).tolist():
      if index == PAD_ID:
        break
      if not 0 <= index < len(self.itos):
        raise errors.CaptionError(
            f'Word id {index} is outside this vocabulary of {len(self)} '
            'words; the ids were made with a different vocabulary. Decode '
            'with the vocabulary saved beside the checkpoint or data set.')
      words.append(self.itos[index])
    return ' '.join(words)

  @classmethod
  def build(cls,
            captions: Iterable[Union[str, Sequence[str]]],
            add_unk: bool = True,
            min_count: int = 1) -> 'Vocab':
    """Builds a vocabulary from captions, with ids that do not depend on luck.

    Ids: '<end>' is 0, then '<unk>' is 1 when `add_unk`, then the words by
    descending count, ties alphabetically. The official code numbered words
    in Python-2 dict order, which changes from run to run, so a rebuilt
    official vocabulary can never match a released checkpoint; a fixed order
    makes ours reproducible (and puts frequent words at small ids). For the
    released pretrained models use `read_captions_pickle` instead.

    Args:
      captions: raw caption strings (tokenized with `tokenize`) or
        already-tokenized word lists, in any mix.
      add_unk: reserve id 1 for '<unk>' so that `encode(..., unknown='unk')`
        can be used.
      min_count: leave out words seen fewer times than this.

    Raises:
      ConfigError: `min_count` is below 1.
      CaptionError: a word list contains '<end>' or '<unk>' itself.
    """
    if min_count < 1:
      raise errors.ConfigError(
          f'min_count must be at least 1, got {min_count}.')
    counts = collections.Counter()
    for caption in captions:
      words = tokenize(caption) if isinstance(caption, str) else list(caption)
      counts.update(words)
    reserved = [token for token in (END_TOKEN, UNK_TOKEN) if token in counts]
    if reserved:
      raise errors.CaptionError(
          f'Tokenized captions contain the reserved tokens {reserved}; they '
          'are added by the vocabulary itself. Remove them from the word lists.')
    kept = [word for word, count in counts.items() if count >= min_count]
    kept.sort(key=lambda word: (-counts[word], word))
    return cls([END_TOKEN] + ([UNK_TOKEN] if add_unk else []) + kept)

  @classmethod
  def from_ixtoword(cls, ixtoword: dict, wordtoix: Optional[dict] = None,
                    source: str = 'ixtoword') -> 'Vocab':
    """Makes a vocabulary from the official id -> word dict, keeping its ids.

    Args:
      ixtoword: dict id -> word with ids exactly 0..n-1 and ixtoword[0] ==
        '<end>'. Words may be bytes (Python-2 str in a pickle read without
        latin1); they are decoded as latin1.
      wordtoix: the official word -> id dict; when given it must be the exact
        inverse of `ixtoword`.
      source: what to call the input in error messages (e.g. the file path).

    Raises:
      DataLayoutError: the dicts break one of those rules.
    """
    if not isinstance(ixtoword, dict) or not ixtoword:
      raise errors.DataLayoutError(
          f'{source}: ixtoword must be a non-empty dict id -> word, got '
          f'{type(ixtoword).__name__}.')
    try:
      ids = sorted(int(index) for index in ixtoword)
    except (TypeError, ValueError):
      raise errors.DataLayoutError(
          f'{source}: ixtoword keys must be integer ids.') from None
    if ids != list(range(len(ixtoword))):
      gaps = sorted(set(range(len(ixtoword))) - set(ids))[:5]
      raise errors.DataLayoutError(
          f'{source}: ixtoword ids must be exactly 0..{len(ixtoword) - 1}, but '
          f'they run from {ids[0]} to {ids[-1]} (missing e.g. {gaps}). The '
          'file is damaged or not a captions.pickle.')
    by_id = {int(index): _as_text(word) for index, word in ixtoword.items()}
    itos = [by_id[index] for index in range(len(by_id))]
    if itos[0] != END_TOKEN:
      raise errors.DataLayoutError(
          f'{source}: ixtoword[0] must be {END_TOKEN!r} (the padding id), got '
          f'{itos[0]!r}. The file is damaged or not a captions.pickle.')
    vocab = cls(itos)
    if wordtoix is not None:
      try:
        inverse = {_as_text(word): int(index)
                   for word, index in wordtoix.items()}
      except (AttributeError, TypeError, ValueError):
        inverse = None
      if inverse != vocab.stoi:
        raise errors.DataLayoutError(
            f'{source}: wordtoix is not the inverse of ixtoword. The file is '
            'damaged; download it again.')
    return vocab

  def to_json(self) -> str:
    """The words in id order as a JSON list, to save beside a checkpoint."""
    return json.dumps(self.itos)

  @classmethod
  def from_json(cls, text: str) -> 'Vocab':
    """Reads what `to_json` wrote.

    Raises:
      DataLayoutError: `text` is not a JSON list of words starting '<end>'.
    """
    try:
      itos = json.loads(text)
    except ValueError as error:
      raise errors.DataLayoutError(
          f'A vocabulary file must be a JSON list of words; parsing failed '
          f'({error}). Restore it from the checkpoint it came with.') from None
    if not isinstance(itos, list):
      raise errors.DataLayoutError(
          'A vocabulary file must be a JSON list of words, got a '
          f'{type(itos).__name__}. Restore it from the checkpoint it came '
          'with.')
    return cls(itos)

  def fingerprint(self) -> str:
    """A short hash of the word list; equal lists give equal fingerprints.

    Stored with a checkpoint, it tells whether a vocabulary is the one the
    checkpoint's embedding table was trained with.
    """
    digest = hashlib.sha256(json.dumps(self.itos).encode('utf-8'))
    return digest.hexdigest()[:16]


def _as_text(word) -> str:
  """A word from a pickle as str; bytes (Python-2 str) are latin1."""
  if isinstance(word, bytes):
    return word.decode('latin1')
  return word


class _CaptionsUnpickler(pickle.Unpickler):
  """Loads only plain data; refuses the globals a hostile pickle would need.

  Captions pickles are downloaded from file hosts, and unpickling can run any
  callable a pickle names. A genuine one names none, except these harmless
  constructors written by Python 3 (bytes under protocol 2) and numpy ints.
  """

  _ALLOWED = frozenset([
      ('_codecs', 'encode'),
      ('numpy', 'dtype'),
      ('numpy.core.multiarray', 'scalar'),
      ('numpy._core.multiarray', 'scalar'),
  ])

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(
          f'it refers to {module}.{name}, which a captions pickle never needs '
          '(refused because loading it could run code)')
    return super().find_class(module, name)


def _caption_arrays(captions, n_words: int, source: str,
                    name: str) -> list[np.ndarray]:
  """Validated int32 id arrays from the pickle's list of id lists."""
  if not isinstance(captions, (list, tuple)):
    raise errors.DataLayoutError(
        f'{source}: {name} must be a list of captions (lists of word ids), got '
        f'{type(captions).__name__}. Is this really a captions.pickle?')
  try:
    lengths = [len(caption) for caption in captions]
    # One flat array: validating and converting ~400k COCO captions one by
    # one is slow, and the per-caption arrays below are views into it.
    flat = np.fromiter(itertools.chain.from_iterable(captions), dtype=np.int64,
                       count=sum(lengths))
  except (TypeError, ValueError):
    raise errors.DataLayoutError(
        f'{source}: every entry of {name} must be a list of integer word '
        'ids. Is this really a captions.pickle?') from None
  out_of_range = (flat < 0) | (flat >= n_words)
  if out_of_range.any():
    bad = int(flat[np.argmax(out_of_range)])
    raise errors.DataLayoutError(
        f'{source}: {name} contains word id {bad}, outside the vocabulary of '
        f'{n_words} words stored in the same file. The file is damaged; '
        'download it again.')
  flat = flat.astype(np.int32)
  return np.split(flat, np.cumsum(lengths)[:-1]) if lengths else []


def read_captions_pickle(
    path: PathLike) -> tuple[list[np.ndarray], list[np.ndarray], Vocab]:
  """Reads the official `captions.pickle` of a data set.

  Caption j of image i of a split is entry `i * captions_per_image + j` of its
  list, images in the order of the split's filenames.pickle. Ids are checked
  to lie in the vocabulary (JAX would silently clamp an out-of-range lookup);
  empty captions and 0 ids inside a caption are passed through as found.

  Args:
    path: the pickle (Python-2 pickles welcome; read with encoding latin1).

  Returns:
    (train captions, test captions, vocabulary); each caption an int32 array.

  Raises:
    DataLayoutError: the file is missing, unreadable or not in that layout.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.DataLayoutError(
        f'Captions file {path} does not exist. Download the data set '
        "metadata (it contains captions.pickle) and put it there, or point the "
        'config at the right data directory.')
  try:
    with open(path, 'rb') as file:
      content = _CaptionsUnpickler(file, encoding='latin1').load()
  except Exception as error:  # Damaged bytes fail in many different ways.
    raise errors.DataLayoutError(
        f'Captions file {path} cannot be unpickled ({error}). It is damaged or '
        'not a captions.pickle; download it again.') from None
  if not isinstance(content, (list, tuple)) or len(content) != 4:
    found = (f'a {len(content)}-item {type(content).__name__}'
             if isinstance(content, (list, tuple)) else type(content).__name__)
    raise errors.DataLayoutError(
        f'Captions file {path} must hold a list [train_captions, '
        f'test_captions, ixtoword, wordtoix], but holds {found}.')
  train, test, ixtoword, wordtoix = content
  if not isinstance(wordtoix, dict):
    raise errors.DataLayoutError(
        f'{path}: wordtoix (item 4) must be a dict word -> id, got '
        f'{type(wordtoix).__name__}.')
  vocab = Vocab.from_ixtoword(ixtoword, wordtoix, source=path)
  return (_caption_arrays(train, len(vocab), path, 'train_captions'),
          _caption_arrays(test, len(vocab), path, 'test_captions'),
          vocab)


def write_captions_pickle(path: PathLike,
                          train_ids: Sequence[Sequence[int]],
                          test_ids: Sequence[Sequence[int]],
                          vocab: Vocab) -> None:
  """Writes captions in the official layout, readable by the original tools.

  Protocol 2 with plain Python ints and strings, so Python-2 code and
  `read_captions_pickle` both read it. The file is replaced atomically.

  Raises:
    CaptionError: a caption is empty or has an id outside 1..len(vocab)-1.
  """
  path = os.fspath(path)
  splits = []
  for name, captions in (('train', train_ids), ('test', test_ids)):
    plain = []
    for index, caption in enumerate(captions):
      ids = [int(i) for i in np.asarray(caption).reshape(-1)]
      if not ids or min(ids) < 1 or max(ids) >= len(vocab):
        raise errors.CaptionError(
            f'{name} caption {index} ({ids[:20]}) must be non-empty with ids '
            f'in 1..{len(vocab) - 1}; 0 is padding only. Encode captions '
            'with Vocab.encode and this same vocabulary.')
      plain.append(ids)
    splits.append(plain)
  ixtoword = dict(enumerate(vocab.itos))
  wordtoix = dict(vocab.stoi)
  temporary = path + '.tmp'
  with open(temporary, 'wb') as file:
    pickle.dump([splits[0], splits[1], ixtoword, wordtoix], file, protocol=2)
  os.replace(temporary, path)


def fixed_length(ids: np.ndarray, max_words: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, int]:
  """Fits a caption into `max_words` slots the way the official loader does.

  A caption that fits is copied and zero-padded. A longer one is randomly
  sub-sampled, not truncated: `max_words` positions are chosen uniformly
  without replacement and kept in their original order, so every word can be
  seen in training.

  Args:
    ids: 1-D word ids of one caption.
    max_words: the number of slots (the official WORDS_NUM, e.g. 18 for CUB).
    rng: the source of randomness for sub-sampling.

  Returns:
    (int32 array of shape (max_words,), number of real words). The official
    code returns shape (max_words, 1); the trailing axis is dropped here.

  Raises:
    ConfigError: `max_words` is below 1.
  """
  if max_words < 1:
    raise errors.ConfigError(f'max_words must be at least 1, got {max_words}.')
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ValueError(f'fixed_length takes one caption (1-D ids), got shape '
                     f'{ids.shape}.')
  out = np.zeros((max_words,), dtype=np.int32)
  if len(ids) <= max_words:
    out[:len(ids)] = ids
    return out, len(ids)
  positions = np.sort(rng.choice(len(ids), size=max_words, replace=False))
  out[:] = ids[positions]
  return out, max_words


def batch_mask(ids):
  """True where `ids` is padding (id 0); works on numpy and JAX arrays.

  The generator's word attention takes this mask trimmed to the first T
  columns, T being the longest caption length in the batch.
  """
  return ids == PAD_ID
