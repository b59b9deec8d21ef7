"""The char-CNN-RNN text encoder of Reed et al. (CVPR 2016), as GAN-INT-CLS uses it.

Input: a caption as 201 characters of a 70-symbol alphabet, one-hot
(reference/stackgan_dfgan_family.md §2.1). Network (`HybridCNNLong`, §2.2):
  conv 4 (70 -> 384) ReLU maxpool 3/3      201 -> 198 -> 66
  conv 4 (384 -> 512) ReLU maxpool 3/3      66 -> 63 -> 21
  conv 4 (512 -> cnn_dim) ReLU              21 -> 18 steps
  recurrent over the 18 steps: Elman RNN (h = ReLU(W_i x + W_h h), cvpr2016's
  FixedRNN) or GRU (FixedGRU; its first step is tanh(W x), no gates), the
  output their time average (avg) or the last state
  dropout, Dense(cnn_dim -> emb_dim)      -> the 1024-d embedding.

Captions reach the encoder as the pipeline's word ids; `CharTable` spells them
out on the device (the words joined by single spaces), so training and
sampling encode a caption the same way. Words keep the tokenizer's lower case
and lose punctuation: the official encoder saw the raw text, which is why the
released 1024-d embeddings (t2ijax/data/embedding_pickles.py) are read rather
than recomputed.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Lua's alphabet string, '-' twice; its dict keeps the later index of '-'.
ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:\'"/\\|_@#$%^&*~`+-=<>()[]{} '
ALPHABET_SIZE = len(ALPHABET)              # 70: the one-hot width
DOC_LENGTH = 201
NONE = ALPHABET_SIZE                        # an all-zero column (unknown, padding)
SPACE = ALPHABET.index(' ')
CHAR_TO_INDEX = {c: i for i, c in enumerate(ALPHABET)}   # later '-' wins, as in Lua


def encode_string(text: str, length: int = DOC_LENGTH) -> np.ndarray:
  """(length,) int32 column indices; NONE for characters outside the alphabet.

  As the official loader: no lower-casing (upper case maps to NONE), text cut
  at `length`, padding NONE.
  """
  out = np.full((length,), NONE, np.int32)
  for i, c in enumerate(text[:length]):
    out[i] = CHAR_TO_INDEX.get(c, NONE)
  return out


@dataclasses.dataclass(frozen=True)
class CharTable:
  """Each vocabulary word spelled in alphabet indices (NONE-padded)."""

  chars: np.ndarray     # (n_words, max_word_length) int32
  lengths: np.ndarray   # (n_words,) int32; 0 for '<end>' and other tokens in <>

  @classmethod
  def from_vocab(cls, vocab) -> 'CharTable':
    words = [w if not (w.startswith('<') and w.endswith('>')) else '' for w in vocab.itos]
    width = max(1, max(len(w) for w in words))
    chars = np.stack([encode_string(w, width) for w in words])
    return cls(chars=chars, lengths=np.asarray([len(w) for w in words], np.int32))

  def spell(self, ids: jax.Array, lengths: jax.Array,
            doc_length: int = DOC_LENGTH) -> jax.Array:
    """(B, T) word ids -> (B, doc_length) characters: the words joined by spaces.

    Jittable: character p belongs to the last word that starts at or before p.
    """
    t = ids.shape[1]
    valid = jnp.arange(t)[None, :] < lengths[:, None]
    word_len = jnp.where(valid, jnp.asarray(self.lengths)[ids], 0)
    span = jnp.where(valid, word_len + 1, 0)                # the word and a space
    start = jnp.cumsum(span, axis=1) - span                 # (B, T)
    p = jnp.arange(doc_length)
    begun = valid[:, None, :] & (start[:, None, :] <= p[None, :, None])   # (B, P, T)
    word = jnp.maximum(jnp.sum(begun, axis=-1) - 1, 0)                    # (B, P)
    offset = p[None, :] - jnp.take_along_axis(start, word, axis=1)
    length = jnp.take_along_axis(word_len, word, axis=1)
    word_id = jnp.take_along_axis(ids, word, axis=1)
    table = jnp.asarray(self.chars)
    char = table[word_id, jnp.clip(offset, 0, table.shape[1] - 1)]
    last = word == lengths[:, None] - 1
    any_word = jnp.any(begun, axis=-1)
    return jnp.where(~any_word, NONE,
                     jnp.where(offset < length, char,
                               jnp.where((offset == length) & ~last, SPACE, NONE)))


def _uniform(limit: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


# The training script draws every parameter from U(-0.08, 0.08).
_INIT = _uniform(0.08)


def _dense(features: int, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=_INIT, bias_init=_INIT, name=name)


class ElmanRnn(nn.Module):
  """cvpr2016 FixedRNN: h_1 = ReLU(i2h x_1); h_t = ReLU(i2h x_t + h2h h_{t-1})."""

  features: int
  average: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    i2h, h2h = _dense(self.features, 'i2h'), _dense(self.features, 'h2h')
    inputs = i2h(x)                                   # all steps at once
    hs = [nn.relu(inputs[:, 0])]
    for t in range(1, x.shape[1]):
      hs.append(nn.relu(inputs[:, t] + h2h(hs[-1])))
    return sum(hs) / len(hs) if self.average else hs[-1]


class Gru(nn.Module):
  """cvpr2016 FixedGRU: h_1 = tanh(i2h x_1), then update/reset-gated steps."""

  features: int
  average: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    f = self.features
    i2h_update, i2h_reset, i2h = (_dense(f, n) for n in ('i2h_update', 'i2h_reset', 'i2h'))
    h2h_update, h2h_reset, h2h = (_dense(f, n) for n in ('h2h_update', 'h2h_reset', 'h2h'))
    xu, xr, xh = i2h_update(x), i2h_reset(x), i2h(x)
    hs = [jnp.tanh(xh[:, 0])]
    for t in range(1, x.shape[1]):
      h = hs[-1]
      update = nn.sigmoid(xu[:, t] + h2h_update(h))
      reset = nn.sigmoid(xr[:, t] + h2h_reset(h))
      candidate = jnp.tanh(xh[:, t] + h2h(reset * h))
      hs.append(update * candidate + (1.0 - update) * h)
    return sum(hs) / len(hs) if self.average else hs[-1]


class CharCnnRnn(nn.Module):
  """(B, 201) character indices -> (B, emb_dim) caption embedding."""

  emb_dim: int = 1024
  cnn_dim: int = 512
  rnn_type: str = 'gru'        # gru | rnn
  average: bool = True
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, chars: jax.Array, deterministic: bool = True) -> jax.Array:
    x = jax.nn.one_hot(chars, ALPHABET_SIZE)                 # NONE -> all zeros
    for i, (features, pool) in enumerate(((384, True), (512, True), (self.cnn_dim, False))):
      x = nn.Conv(features, (4,), padding='VALID', kernel_init=_INIT, bias_init=_INIT,
                  name=f'conv{i}')(x)
      x = nn.relu(x)
      if pool:
        x = nn.max_pool(x, (3,), strides=(3,))
    if self.rnn_type == 'gru':
      h = Gru(self.cnn_dim, self.average, name='rnn')(x)
    elif self.rnn_type == 'rnn':
      h = ElmanRnn(self.cnn_dim, self.average, name='rnn')(x)
    else:
      raise ValueError(f"rnn_type must be 'gru' or 'rnn', got {self.rnn_type!r}")
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return _dense(self.emb_dim, 'proj')(h)
