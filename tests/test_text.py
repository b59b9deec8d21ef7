"""Tests of t2ijax.data.text: tokenizer, vocab, captions.pickle, padding."""

import itertools
import os
import pickle
import struct

import numpy as np
import pytest

from t2ijax import errors
from t2ijax.data import text

# A tiny vocabulary in the official layout: id 0 '<end>', no '<unk>'.
OFFICIAL_WORDS = ['<end>', 'this', 'bird', 'has', 'a', 'red', 'beak', 'small']


def official_vocab():
  return text.Vocab(OFFICIAL_WORDS)


# --- tokenize ---------------------------------------------------------------


@pytest.mark.parametrize('caption, words', [
    ('This bird has a RED beak.', ['this', 'bird', 'has', 'a', 'red', 'beak']),
    ('wings,tail;and-feet!', ['wings', 'tail', 'and', 'feet']),
    ('It has 2 wings and 10 toes', ['it', 'has', '2', 'wings', 'and', '10',
                                    'toes']),
    ('snake_case words', ['snake_case', 'words']),
    ('a café bird', ['a', 'caf', 'bird']),
    ('über', ['ber']),
    ('日本 bird', ['bird']),  # All-non-ASCII run becomes empty and is dropped.
    ('bird\ufffd\ufffdwing', ['bird', 'wing']),
    ('bird\ufffdwing', ['bird', 'wing']),  # A lone U+FFFD is not \w anyway.
    ("the bird's beak", ['the', 'bird', 's', 'beak']),
    ('  \t\n ', []),
    ('', []),
    ('...!?', []),
])
def test_tokenize(caption, words):
  assert text.tokenize(caption) == words


def test_tokenize_replaces_the_pair_before_lowercasing():
  # The pair is replaced by a space, so it separates words as any space would.
  assert text.tokenize('A\ufffd\ufffdB') == ['a', 'b']


# --- Vocab: encode / decode -------------------------------------------------


def test_encode_decode_round_trip():
  vocab = official_vocab()
  ids = vocab.encode('This bird has a small, red beak.')
  assert ids.dtype == np.int32
  assert ids.tolist() == [1, 2, 3, 4, 7, 5, 6]
  assert vocab.decode(ids) == 'this bird has a small red beak'


def test_decode_stops_at_padding_and_takes_lists():
  vocab = official_vocab()
  assert vocab.decode([2, 5, 0, 3, 0]) == 'bird red'
  assert vocab.decode(np.zeros((4,), np.int32)) == ''


def test_decode_rejects_ids_outside_the_vocabulary():
  with pytest.raises(errors.CaptionError, match='99'):
    official_vocab().decode([1, 99])


def test_encode_skip_drops_unknown_words_by_default():
  vocab = official_vocab()
  assert vocab.encode('this zebra bird').tolist() == [1, 2]
  assert vocab.encode('this zebra bird', unknown='skip').tolist() == [1, 2]


def test_encode_unk_maps_unknown_words_to_unk():
  vocab = text.Vocab.build(['a red bird', 'a blue bird'])
  unk = vocab.stoi['<unk>']
  ids = vocab.encode('a green bird', unknown='unk')
  assert ids.tolist() == [vocab.stoi['a'], unk, vocab.stoi['bird']]


def test_encode_unk_needs_a_vocabulary_with_unk():
  with pytest.raises(errors.ConfigError, match='<unk>'):
    official_vocab().encode('this bird', unknown='unk')


def test_encode_error_names_every_unknown_word_once():
  with pytest.raises(errors.CaptionError) as info:
    official_vocab().encode('this zebra bird has zebra stripes',
                            unknown='error')
  message = str(info.value)
  assert "'zebra'" in message and "'stripes'" in message
  assert message.count("'zebra'") == 1
  assert 'this zebra bird' in message  # Names the caption.
  assert "unknown='skip'" in message  # And says what to do.


def test_encode_error_passes_known_captions():
  assert official_vocab().encode('a red beak', unknown='error').tolist() == [
      4, 5, 6]


def test_encode_rejects_an_unknown_policy():
  with pytest.raises(errors.ConfigError, match='ignore'):
    official_vocab().encode('this bird', unknown='ignore')


@pytest.mark.parametrize('caption', ['', '   ', '?!'])
def test_encode_rejects_a_caption_without_words(caption):
  with pytest.raises(errors.CaptionError, match='no words'):
    official_vocab().encode(caption)


def test_encode_rejects_a_caption_with_only_unknown_words():
  with pytest.raises(errors.CaptionError) as info:
    official_vocab().encode('zebra stripes')
  assert 'zebra stripes' in str(info.value)
  assert 'Rephrase' in str(info.value)


# --- Vocab: construction ----------------------------------------------------


def test_build_id_layout_and_order():
  captions = ['b a c', 'a c', 'a', ['d', 'b']]  # Strings and word lists mix.
  vocab = text.Vocab.build(captions)
  # Counts: a 3, b 2, c 2, d 1 -> descending count, ties alphabetical.
  assert vocab.itos == ['<end>', '<unk>', 'a', 'b', 'c', 'd']
  assert vocab.stoi == {w: i for i, w in enumerate(vocab.itos)}
  assert len(vocab) == 6
  assert vocab.unk_id == 1


def test_build_without_unk_and_with_min_count():
  vocab = text.Vocab.build(['b a c', 'a c', 'a'], add_unk=False, min_count=2)
  assert vocab.itos == ['<end>', 'a', 'c']
  assert vocab.unk_id is None


def test_build_is_deterministic_whatever_the_caption_order():
  captions = [f'w{i % 7} w{i % 3} w{i % 11}' for i in range(100)]
  first = text.Vocab.build(captions)
  second = text.Vocab.build(list(reversed(captions)))
  assert first == second
  assert first.fingerprint() == second.fingerprint()


def test_build_rejects_reserved_tokens_in_word_lists():
  with pytest.raises(errors.CaptionError, match='reserved'):
    text.Vocab.build([['a', '<end>']])


def test_build_rejects_a_bad_min_count():
  with pytest.raises(errors.ConfigError):
    text.Vocab.build(['a'], min_count=0)


@pytest.mark.parametrize('itos, pattern', [
    ([], 'start with'),
    (['bird', '<end>'], 'start with'),
    (['<end>', 'a', 'a'], 'more than once'),
    (['<end>', ''], 'non-empty'),
    (['<end>', 3], 'non-empty'),
])
def test_vocab_rejects_bad_word_lists(itos, pattern):
  with pytest.raises(errors.DataLayoutError, match=pattern):
    text.Vocab(itos)


def test_json_round_trip_and_fingerprint():
  vocab = text.Vocab.build(['a red bird', 'a small bird'])
  restored = text.Vocab.from_json(vocab.to_json())
  assert restored == vocab
  assert restored.itos == vocab.itos
  assert restored.fingerprint() == vocab.fingerprint()
  assert len(vocab.fingerprint()) == 16
  other = text.Vocab(vocab.itos[:-1])
  assert other.fingerprint() != vocab.fingerprint()


def test_fingerprint_is_stable_across_runs():
  # A fixed value: a change here would orphan every saved checkpoint.
  assert text.Vocab(['<end>', 'a']).fingerprint() == (
      text.Vocab.from_json('["<end>", "a"]').fingerprint())
  # sha256 of the JSON text '["<end>", "a"]', first 16 hex digits.
  assert text.Vocab(['<end>', 'a']).fingerprint() == '75ea00e91fbd6e17'


@pytest.mark.parametrize('payload', ['not json', '{"a": 1}', '["a", "<end>"]'])
def test_from_json_rejects_bad_files(payload):
  with pytest.raises(errors.DataLayoutError):
    text.Vocab.from_json(payload)


def test_from_ixtoword_keeps_the_given_ids():
  ixtoword = {2: 'bird', 0: '<end>', 1: 'this'}
  vocab = text.Vocab.from_ixtoword(ixtoword, {'bird': 2, '<end>': 0, 'this': 1})
  assert vocab.itos == ['<end>', 'this', 'bird']


@pytest.mark.parametrize('ixtoword, pattern', [
    ({0: '<end>', 2: 'bird'}, 'exactly 0..1'),
    ({1: '<end>', 2: 'bird'}, 'exactly 0..1'),
    ({0: 'bird', 1: '<end>'}, r"ixtoword\[0\]"),
    ({'zero': '<end>'}, 'integer'),
    ({}, 'non-empty'),
])
def test_from_ixtoword_rejects_bad_tables(ixtoword, pattern):
  with pytest.raises(errors.DataLayoutError, match=pattern):
    text.Vocab.from_ixtoword(ixtoword)


def test_from_ixtoword_rejects_a_wordtoix_that_disagrees():
  with pytest.raises(errors.DataLayoutError, match='inverse'):
    text.Vocab.from_ixtoword({0: '<end>', 1: 'a', 2: 'b'},
                             {'<end>': 0, 'a': 2, 'b': 1})


# --- captions.pickle --------------------------------------------------------


def _py2_pickle(obj) -> bytes:
  """Protocol-2 bytes as Python 2 writes them: str values as SHORT_BINSTRING.

  Python 3 cannot produce these opcodes for str, and they are what makes the
  official pickles need encoding='latin1'.
  """
  parts = [b'\x80\x02']

  def emit(value):
    if isinstance(value, bytes):  # A Python-2 str.
      parts.append(b'U' + bytes([len(value)]) + value)
    elif isinstance(value, int):
      parts.append(b'J' + struct.pack('<i', value))
    elif isinstance(value, list):
      parts.append(b'](')
      for item in value:
        emit(item)
      parts.append(b'e')
    elif isinstance(value, dict):
      parts.append(b'}(')
      for key, item in value.items():
        emit(key)
        emit(item)
      parts.append(b'u')
    else:
      raise TypeError(type(value))

  emit(obj)
  parts.append(b'.')
  return b''.join(parts)


def _official_content(words):
  """The official 4-item list for 2 train images and 1 test image, 2 each."""
  train = [[1, 2, 3, 4, 5, 6], [2, 5, 6], [4, 7, 2], [1, 2]]
  test = [[7, 2], [1, 2, 3, 4, 7, 5, 6]]
  ixtoword = dict(enumerate(words))
  wordtoix = {word: index for index, word in enumerate(words)}
  return [train, test, ixtoword, wordtoix]


def _check_official(train, test, vocab, words):
  assert len(train) == 4 and len(test) == 2
  assert all(caption.dtype == np.int32 for caption in train + test)
  assert train[0].tolist() == [1, 2, 3, 4, 5, 6]
  assert test[1].tolist() == [1, 2, 3, 4, 7, 5, 6]
  assert vocab.itos == words
  # Caption j of image i is entry i * captions_per_image + j.
  assert vocab.decode(train[1 * 2 + 0]) == ' '.join(
      [words[4], words[7], words[2]])


def test_write_then_read_round_trip(tmp_path):
  vocab = text.Vocab.build(['a red bird', 'a small bird with a red beak'])
  train = [vocab.encode('a red bird'), vocab.encode('red beak')]
  test = [np.array([3, 2], np.int64)]
  path = tmp_path / 'captions.pickle'
  text.write_captions_pickle(path, train, test, vocab)
  train_read, test_read, vocab_read = text.read_captions_pickle(str(path))
  assert vocab_read == vocab
  assert [c.tolist() for c in train_read] == [c.tolist() for c in train]
  assert [c.tolist() for c in test_read] == [[3, 2]]
  assert not os.path.exists(str(path) + '.tmp')


def test_written_file_is_the_plain_official_layout(tmp_path):
  vocab = official_vocab()
  path = tmp_path / 'captions.pickle'
  text.write_captions_pickle(path, [vocab.encode('this bird')], [], vocab)
  raw = path.read_bytes()
  assert raw[:2] == b'\x80\x02'  # Protocol 2.
  with open(path, 'rb') as file:
    content = pickle.load(file)  # No custom classes needed to read it.
  assert content == [[[1, 2]], [], dict(enumerate(OFFICIAL_WORDS)),
                     {w: i for i, w in enumerate(OFFICIAL_WORDS)}]
  assert type(content[0][0][0]) is int


def test_read_official_protocol_2_pickle(tmp_path):
  path = tmp_path / 'captions.pickle'
  path.write_bytes(pickle.dumps(_official_content(OFFICIAL_WORDS), protocol=2))
  train, test, vocab = text.read_captions_pickle(path)
  _check_official(train, test, vocab, OFFICIAL_WORDS)


def test_read_python2_pickle_needs_latin1(tmp_path):
  # Python-2 str opcodes, with one non-ASCII byte that only latin1 decodes.
  words = [word.encode('ascii') for word in OFFICIAL_WORDS]
  words[7] = b'sm\xe9ll'
  raw = _py2_pickle(_official_content(words))
  with pytest.raises(UnicodeDecodeError):
    pickle.loads(raw)  # The default ASCII decoding fails on such files.
  path = tmp_path / 'captions.pickle'
  path.write_bytes(raw)
  train, test, vocab = text.read_captions_pickle(path)
  expected = OFFICIAL_WORDS[:7] + ['sm\xe9ll']
  _check_official(train, test, vocab, expected)


def test_read_pickle_with_bytes_words(tmp_path):
  words = [word.encode('ascii') for word in OFFICIAL_WORDS]
  path = tmp_path / 'captions.pickle'
  path.write_bytes(pickle.dumps(_official_content(words), protocol=2))
  train, test, vocab = text.read_captions_pickle(path)
  _check_official(train, test, vocab, OFFICIAL_WORDS)


def test_read_pickle_with_numpy_ids(tmp_path):
  content = _official_content(OFFICIAL_WORDS)
  content[0] = [[np.int64(i) for i in caption] for caption in content[0]]
  path = tmp_path / 'captions.pickle'
  path.write_bytes(pickle.dumps(content, protocol=2))
  train, test, vocab = text.read_captions_pickle(path)
  _check_official(train, test, vocab, OFFICIAL_WORDS)


def test_read_missing_pickle_names_the_path(tmp_path):
  path = tmp_path / 'nowhere' / 'captions.pickle'
  with pytest.raises(errors.DataLayoutError, match='does not exist') as info:
    text.read_captions_pickle(path)
  assert str(path) in str(info.value)


@pytest.mark.parametrize('raw', [
    b'',
    b'this is not a pickle',
    pickle.dumps([[], []], protocol=2)[:-5],  # Truncated.
])
def test_read_corrupt_pickle_names_the_path(tmp_path, raw):
  path = tmp_path / 'captions.pickle'
  path.write_bytes(raw)
  with pytest.raises(errors.DataLayoutError,
                     match='cannot be unpickled') as info:
    text.read_captions_pickle(path)
  assert str(path) in str(info.value)


class _Hostile:

  def __reduce__(self):
    return (os.getcwd, ())


def test_read_refuses_pickles_that_call_functions(tmp_path):
  path = tmp_path / 'captions.pickle'
  path.write_bytes(pickle.dumps([_Hostile(), [], {0: '<end>'}, {}], protocol=2))
  with pytest.raises(errors.DataLayoutError, match='getcwd'):
    text.read_captions_pickle(path)


def _bad_layouts():
  good = _official_content(OFFICIAL_WORDS)
  yield {'train': []}, 'holds dict'
  yield good[:3], '3-item list'
  yield [good[0], good[1], good[2], 'wordtoix'], 'wordtoix'
  yield [good[0], good[1], good[3], good[2]], 'ixtoword'
  yield [[[1, 2]], 'test', good[2], good[3]], 'test_captions'
  yield [[['bird']], [], good[2], good[3]], 'integer word ids'
  yield [[[1, 8]], [], good[2], good[3]], 'word id 8'
  yield [[[1, -1]], [], good[2], good[3]], 'word id -1'
  yield [[], [], {0: 'bird'}, {'bird': 0}], r"ixtoword\[0\]"


@pytest.mark.parametrize('content, pattern', list(_bad_layouts()))
def test_read_rejects_other_layouts(tmp_path, content, pattern):
  path = tmp_path / 'captions.pickle'
  path.write_bytes(pickle.dumps(content, protocol=2))
  with pytest.raises(errors.DataLayoutError, match=pattern) as info:
    text.read_captions_pickle(path)
  assert str(path) in str(info.value)


@pytest.mark.parametrize('caption', [[], [0, 1], [1, 8]])
def test_write_rejects_captions_outside_the_vocabulary(tmp_path, caption):
  path = tmp_path / 'captions.pickle'
  with pytest.raises(errors.CaptionError, match='train caption 1'):
    text.write_captions_pickle(path, [[1], caption], [], official_vocab())
  assert not path.exists()


# --- fixed_length / batch_mask ---------------------------------------------


@pytest.mark.parametrize('length', [0, 1, 5])
def test_fixed_length_pads_short_captions(length):
  ids = np.arange(1, length + 1, dtype=np.int64)
  rng = np.random.default_rng(0)
  state = rng.bit_generator.state
  out, out_length = text.fixed_length(ids, 5, rng)
  assert out.dtype == np.int32 and out.shape == (5,)
  assert out_length == length
  assert out[:length].tolist() == ids.tolist()
  assert not out[length:].any()
  assert rng.bit_generator.state == state  # No randomness spent.


def test_fixed_length_subsamples_long_captions_in_order():
  ids = np.arange(10, 30, dtype=np.int32)  # Distinct, increasing.
  rng = np.random.default_rng(1)
  for _ in range(50):
    out, out_length = text.fixed_length(ids, 7, rng)
    assert out.shape == (7,) and out_length == 7
    assert set(out.tolist()) <= set(ids.tolist())
    assert len(set(out.tolist())) == 7  # Without replacement.
    assert np.all(np.diff(out) > 0)  # Word order kept.


def test_fixed_length_subsampling_is_uniform():
  # Every 3-subset of 6 positions should be equally likely (1/20 each).
  ids = np.arange(1, 7)
  rng = np.random.default_rng(2)
  trials = 20000
  counts = {}
  for _ in range(trials):
    out, _ = text.fixed_length(ids, 3, rng)
    key = tuple(out.tolist())
    counts[key] = counts.get(key, 0) + 1
  assert set(counts) == set(itertools.combinations(range(1, 7), 3))
  expected = trials / 20  # 1000; standard deviation about 31.
  assert all(abs(count - expected) < 150 for count in counts.values())


def test_fixed_length_is_deterministic_given_the_seed():
  ids = np.arange(1, 41)
  first = [text.fixed_length(ids, 18, np.random.default_rng(7))[0]
           for _ in range(3)]
  assert all(np.array_equal(first[0], other) for other in first)
  different = text.fixed_length(ids, 18, np.random.default_rng(8))[0]
  assert not np.array_equal(first[0], different)


def test_fixed_length_rejects_bad_arguments():
  rng = np.random.default_rng(0)
  with pytest.raises(errors.ConfigError):
    text.fixed_length(np.array([1, 2]), 0, rng)
  with pytest.raises(ValueError):
    text.fixed_length(np.array([[1, 2]]), 3, rng)


def test_batch_mask_marks_padding():
  ids = np.array([[3, 4, 0, 0], [5, 0, 0, 0]], np.int32)
  np.testing.assert_array_equal(
      text.batch_mask(ids),
      [[False, False, True, True], [False, True, True, True]])
