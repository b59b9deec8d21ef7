"""The text vector GAN-INT-CLS (and the StackGAN family) is conditioned on, by config.

config.text.kind:
  'damsm'         the frozen DAMSM's sentence vector (nef, 256 officially) of the
                  example's caption; the demo default, no extra files.
  'char_cnn_rnn'  a char-CNN-RNN encoder trained with configs/char_cnn_rnn.py
                  (config.text.char_cnn_rnn_workdir); its 1024-d embedding of the
                  caption, spelled from the pipeline's word ids.
  'pickle'        the released precomputed embeddings
                  (config.text.pickle_dir/<split>/char-CNN-RNN-embeddings.pickle):
                  per example, the mean of text.num_captions caption embeddings
                  of its image drawn with replacement (GAN-INT-CLS's netR; 1 for
                  StackGAN-Pytorch's one caption). Looked up by the pipeline's
                  `index` / `wrong_index`, so it needs no change to the pipeline,
                  but it cannot encode new captions.

Frozen weights and tables travel in the train state (under 'cond_*' nets), as
the DAMSM does in the shared GAN trainer.
"""

import os

import jax
import jax.numpy as jnp

from t2ijax import errors
from t2ijax.data import embedding_pickles
from t2ijax.encoders import char_cnn_rnn
from t2ijax.trainers import state as state_lib

KINDS = ('damsm', 'char_cnn_rnn', 'pickle')


def _split_keys(data_config, split: str) -> list[str]:
  from t2ijax.data import prepare
  source = prepare.open_prepared(data_config).source(split)
  return [source[i]['key'] if isinstance(source[i]['key'], str) else source[i]['key'].decode()
          for i in range(len(source))]


class TextConditioner:
  """Turns captions (word ids) or batch rows into (B, dim) conditioning vectors."""

  def __init__(self, config, vocab, damsm):
    t = config.text
    if t.kind not in KINDS:
      raise errors.ConfigError(f'text.kind={t.kind!r} is not one of {list(KINDS)}')
    self.kind, self.config, self.damsm = t.kind, config, damsm
    if self.kind == 'damsm':
      self.dim = damsm.config.model.nef
    elif self.kind == 'char_cnn_rnn':
      from t2ijax.trainers import char_cnn_rnn as trainer
      if not t.char_cnn_rnn_workdir:
        raise errors.ConfigError(
            "text.kind='char_cnn_rnn' needs a trained encoder: train one with python -m "
            't2ijax.main --config=configs/char_cnn_rnn.py:VARIANT --workdir=DIR and pass '
            '--config.text.char_cnn_rnn_workdir=DIR')
      self.encoder, self.encoder_params = trainer.load_text_encoder(t.char_cnn_rnn_workdir)
      self.chars = char_cnn_rnn.CharTable.from_vocab(vocab)
      self.dim = self.encoder.emb_dim
    else:
      if not t.pickle_dir:
        raise errors.ConfigError(
            "text.kind='pickle' needs text.pickle_dir: the folder holding train/ and test/ "
            'with char-CNN-RNN-embeddings.pickle and filenames.pickle')
      d = config.data
      self.tables = {}
      for split in (d.train_split, d.eval_split):
        emb = embedding_pickles.read_split(os.path.join(t.pickle_dir, split), t.embedding_file)
        self.tables[split] = emb.aligned(_split_keys(d, split))
      self.dim = self.tables[d.train_split].shape[-1]

  @property
  def encodes_captions(self) -> bool:
    return self.kind != 'pickle'

  def init_nets(self) -> dict:
    if self.kind == 'char_cnn_rnn':
      return {'cond_text': state_lib.new_net(jax.tree.map(jnp.asarray, self.encoder_params), None)}
    if self.kind == 'pickle':
      return {'cond_embeddings': state_lib.new_net(
          {s: jnp.asarray(v) for s, v in self.tables.items()}, None)}
    return {}

  def from_ids(self, state, ids: jax.Array, lengths: jax.Array) -> jax.Array:
    """(B, dim) vectors of captions given as word ids."""
    if self.kind == 'damsm':
      out = self.damsm.text_encoder.apply(state.nets['text_encoder'].variables(), ids,
                                          lengths, deterministic=True)
      return out['sentence']
    if self.kind == 'char_cnn_rnn':
      chars = self.chars.spell(ids, lengths)
      return self.encoder.apply({'params': state.nets['cond_text'].params}, chars,
                                deterministic=True)
    raise errors.ConfigError(
        "text.kind='pickle' has only the data set's precomputed embeddings and cannot "
        "encode new captions; use text.kind='damsm' or 'char_cnn_rnn' to sample from text")

  def from_batch(self, state, batch, split: str, key: jax.Array,
                 wrong: bool = False) -> jax.Array:
    """(B, dim) vectors of a batch's captions (or its mismatched captions)."""
    if self.kind != 'pickle':
      prefix = 'wrong_' if wrong else ''
      return self.from_ids(state, batch[prefix + 'caption'], batch[prefix + 'caption_len'])
    table = state.nets['cond_embeddings'].params[split]      # (N, captions, D)
    rows = batch['wrong_index' if wrong else 'index']
    n = self.config.text.num_captions
    picks = jax.random.randint(key, (rows.shape[0], n), 0, table.shape[1])
    return jnp.mean(table[rows[:, None], picks], axis=1)

