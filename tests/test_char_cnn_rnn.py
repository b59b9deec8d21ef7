"""Tests of the char-CNN-RNN encoder, the joint embedding loss, the embedding pickles
and the text conditioning built on them.

References written here: a torch HybridCNNLong from reference/
stackgan_dfgan_family.md §2.2 and cvpr2016's FixedRNN / FixedGRU (1-D convs,
max pools, the recurrence unrolled by hand), and the SJE loss as the official
double loop over images and texts.
"""

import os
import pickle

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from t2ijax import errors
from t2ijax import text_conditioning
from t2ijax.data import embedding_pickles
from t2ijax.data import text as text_lib
from t2ijax.encoders import char_cnn_rnn as ccr
from t2ijax.losses import joint_embedding
from t2ijax.trainers import char_cnn_rnn as trainer
from t2ijax.trainers import state as state_lib
from tests import tiny_configs


# --- character encoding --------------------------------------------------------


def test_alphabet_and_string_encoding_follow_the_official_loader():
  assert ccr.ALPHABET_SIZE == 70
  assert ccr.CHAR_TO_INDEX['-'] == 59          # the later of the two '-' (Lua 60)
  assert 36 not in ccr.CHAR_TO_INDEX.values()  # Lua index 37 is never produced
  assert ccr.CHAR_TO_INDEX[' '] == 69
  codes = ccr.encode_string('ab-Z?', 8)
  np.testing.assert_array_equal(codes, [0, 1, 59, ccr.NONE, 41, ccr.NONE, ccr.NONE, ccr.NONE])


def test_spelling_word_ids_equals_encoding_the_joined_words():
  vocab = text_lib.Vocab(['<end>', 'a', 'red', 'circle', 'on', 'the', 'left', 'x' * 30])
  table = ccr.CharTable.from_vocab(vocab)
  captions = [[1, 2, 3, 4, 5, 6], [3], [7, 7, 7, 7, 7, 7, 7, 7]]   # the last one is cut at 40
  ids = np.zeros((3, 8), np.int32)
  for i, c in enumerate(captions):
    ids[i, :len(c)] = c
  lengths = np.asarray([len(c) for c in captions], np.int32)
  got = np.asarray(jax.jit(lambda i, l: table.spell(i, l, 40))(ids, lengths))
  for i, c in enumerate(captions):
    np.testing.assert_array_equal(got[i], ccr.encode_string(vocab.decode(c), 40))


# --- the network against torch -------------------------------------------------


class TorchHybridCnnLong(torch.nn.Module):

  def __init__(self, emb_dim, cnn_dim, rnn_type):
    super().__init__()
    nn = torch.nn
    self.convs = nn.ModuleList([nn.Conv1d(70, 384, 4), nn.Conv1d(384, 512, 4),
                                nn.Conv1d(512, cnn_dim, 4)])
    names = (['i2h', 'h2h'] if rnn_type == 'rnn' else
             ['i2h_update', 'i2h_reset', 'i2h', 'h2h_update', 'h2h_reset', 'h2h'])
    self.rnn = nn.ModuleDict({n: nn.Linear(cnn_dim, cnn_dim) for n in names})
    self.proj = nn.Linear(cnn_dim, emb_dim)
    self.rnn_type = rnn_type

  def forward(self, onehot):                      # (B, 70, 201)
    x = onehot
    for i, conv in enumerate(self.convs):
      x = torch.relu(conv(x))
      if i < 2:
        x = torch.nn.functional.max_pool1d(x, 3, 3)
    steps = x.permute(2, 0, 1)                    # (18, B, C)
    r = self.rnn
    if self.rnn_type == 'rnn':
      hs = [torch.relu(r['i2h'](steps[0]))]
      for x_t in steps[1:]:
        hs.append(torch.relu(r['i2h'](x_t) + r['h2h'](hs[-1])))
    else:
      hs = [torch.tanh(r['i2h'](steps[0]))]
      for x_t in steps[1:]:
        h = hs[-1]
        u = torch.sigmoid(r['i2h_update'](x_t) + r['h2h_update'](h))
        g = torch.sigmoid(r['i2h_reset'](x_t) + r['h2h_reset'](h))
        cand = torch.tanh(r['i2h'](x_t) + r['h2h'](g * h))
        hs.append(u * cand + (1 - u) * h)
    return self.proj(sum(hs) / len(hs))


def _flax_params(tm):
  t = lambda x: x.detach().numpy()
  params = {f'conv{i}': {'kernel': t(c.weight).transpose(2, 1, 0), 'bias': t(c.bias)}
            for i, c in enumerate(tm.convs)}
  params['rnn'] = {n: {'kernel': t(m.weight).T, 'bias': t(m.bias)} for n, m in tm.rnn.items()}
  params['proj'] = {'kernel': t(tm.proj.weight).T, 'bias': t(tm.proj.bias)}
  return params


@pytest.mark.parametrize('rnn_type', ['gru', 'rnn'])
def test_official_encoder_has_the_reference_parameter_count(rnn_type):
  module = ccr.CharCnnRnn(emb_dim=1024, cnn_dim=512, rnn_type=rnn_type)
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jnp.zeros((2, ccr.DOC_LENGTH), jnp.int32))['params']
  tm = TorchHybridCnnLong(1024, 512, rnn_type)
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == sum(
      p.numel() for p in tm.parameters())
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(np.shape, _flax_params(tm))
  # conv 1943936 + recurrence + projection 525312 [calc]
  assert sum(p.numel() for p in tm.parameters()) == (4_045_184 if rnn_type == 'gru'
                                                      else 2_994_560)


@pytest.mark.parametrize('rnn_type', ['gru', 'rnn'])
def test_encoder_equals_torch_with_the_same_weights(rnn_type):
  torch.manual_seed(0)
  tm = TorchHybridCnnLong(emb_dim=6, cnn_dim=8, rnn_type=rnn_type)
  chars = np.stack([ccr.encode_string('this bird is red with a short beak.'),
                    ccr.encode_string('a small yellow bird; black wings!'),
                    ccr.encode_string('')])
  onehot = np.eye(71, dtype=np.float32)[chars][..., :70]          # NONE -> zeros
  with torch.no_grad():
    want = tm(torch.from_numpy(onehot.transpose(0, 2, 1))).numpy()
  module = ccr.CharCnnRnn(emb_dim=6, cnn_dim=8, rnn_type=rnn_type)
  got = module.apply({'params': _flax_params(tm)}, jnp.asarray(chars))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


# --- the joint embedding loss --------------------------------------------------


def _official_sje(fea_txt, fea_img, labels):
  """cvpr2016 JointEmbeddingLoss, loop for loop."""
  batch, num_class = len(fea_img), len(fea_txt)
  loss = 0.0
  for i in range(batch):
    score = [float(np.dot(fea_img[i], fea_txt[j])) for j in range(num_class)]
    for j in range(num_class):
      if j != labels[i]:
        loss += max(0.0, score[j] - score[labels[i]] + 1)
  return loss / (batch * num_class)


def test_joint_embedding_loss_equals_the_official_loops():
  rng = np.random.default_rng(0)
  text, image = rng.normal(size=(2, 5, 3)).astype(np.float32) * 0.7
  labels = np.arange(5)
  out = joint_embedding.joint_embedding_loss(text, image)
  want_i2t = _official_sje(text, image, labels)
  want_t2i = _official_sje(image, text, labels)      # symmetric: roles swapped
  np.testing.assert_allclose(out['image_to_text'], want_i2t, rtol=1e-5)
  np.testing.assert_allclose(out['text_to_image'], want_t2i, rtol=1e-5)
  np.testing.assert_allclose(out['loss'], want_i2t + want_t2i, rtol=1e-5)
  assert float(joint_embedding.joint_embedding_loss(text, image, symmetric=False)['loss']) == \
      pytest.approx(want_i2t, rel=1e-5)
  # Same-class pairs are not negatives: with one class the loss is zero.
  assert float(joint_embedding.joint_embedding_loss(text, image, np.zeros(5))['loss']) == 0.0
  # Classes {0, 1, 0, 2, 3}: drop (0, 2) and (2, 0) from both sides.
  classes = np.asarray([0, 1, 0, 2, 3])
  masked = joint_embedding.joint_embedding_loss(text, image, classes)
  score = image @ text.T
  hinge = np.maximum(0, 1 + score - np.diag(score)[:, None])
  keep = (classes[:, None] != classes[None, :])
  np.testing.assert_allclose(masked['image_to_text'], np.sum(hinge * keep) / 25, rtol=1e-5)


# --- embedding pickles ---------------------------------------------------------


def _write(path, obj):
  with open(path, 'wb') as f:
    pickle.dump(obj, f, protocol=2)


def _pickle_split(root, split, keys, captions=3, dim=4, seed=0, classes=True):
  d = os.path.join(root, split)
  os.makedirs(d, exist_ok=True)
  emb = np.random.default_rng(seed).normal(size=(len(keys), captions, dim)).astype(np.float32)
  _write(os.path.join(d, 'char-CNN-RNN-embeddings.pickle'), emb)
  _write(os.path.join(d, 'filenames.pickle'), list(keys))
  if classes:
    _write(os.path.join(d, 'class_info.pickle'), list(range(len(keys))))
  return emb


def test_pickle_reader_looks_up_by_filename_and_caption(tmp_path):
  keys = ['001.A/a_1', '001.A/a_2', '002.B/b_1']
  emb = _pickle_split(str(tmp_path), 'train', keys)
  s = embedding_pickles.read_split(str(tmp_path / 'train'))
  assert (s.num_captions, s.dim) == (3, 4)
  np.testing.assert_array_equal(s.lookup('002.B/b_1', 1), emb[2, 1])
  np.testing.assert_array_equal(s.aligned(['002.B/b_1', '001.A/a_1']), emb[[2, 0]])
  np.testing.assert_array_equal(s.class_ids, [0, 1, 2])
  with pytest.raises(errors.DataLayoutError, match='no precomputed embedding'):
    s.lookup('003.C/c_1', 0)
  with pytest.raises(errors.DataLayoutError, match='caption index 3'):
    s.lookup('001.A/a_1', 3)
  with pytest.raises(errors.DataLayoutError, match='1 of 2 images'):
    s.aligned(['001.A/a_1', 'nope'])


def test_pickle_reader_rejects_missing_corrupt_and_mismatched_files(tmp_path):
  root = str(tmp_path)
  with pytest.raises(errors.DataLayoutError, match='missing embedding metadata'):
    embedding_pickles.read_split(os.path.join(root, 'train'))
  _pickle_split(root, 'train', ['a', 'b', 'c'])
  d = os.path.join(root, 'train')
  _write(os.path.join(d, 'filenames.pickle'), ['a', 'b'])
  with pytest.raises(errors.DataLayoutError, match='holds 3 images but .* lists 2'):
    embedding_pickles.read_split(d)
  _write(os.path.join(d, 'filenames.pickle'), ['a', 'b', 'c'])
  with open(os.path.join(d, 'char-CNN-RNN-embeddings.pickle'), 'wb') as f:
    f.write(b'\x80\x02garbage')
  with pytest.raises(errors.DataLayoutError, match='cannot be unpickled'):
    embedding_pickles.read_split(d)
  _write(os.path.join(d, 'char-CNN-RNN-embeddings.pickle'), np.zeros((3,)))
  with pytest.raises(errors.DataLayoutError, match=r'\(images, captions, dim\)'):
    embedding_pickles.read_split(d)
  _pickle_split(root, 'train', ['a', 'b', 'c'])
  _write(os.path.join(d, 'class_info.pickle'), [1, 2])
  with pytest.raises(errors.DataLayoutError, match='one integer class id per image'):
    embedding_pickles.read_split(d)


def test_pickle_conditioning_averages_caption_embeddings_of_the_row(tmp_path, monkeypatch):
  keys = {'train': ['t0', 't1', 't2'], 'test': ['s0', 's1']}
  emb = {split: _pickle_split(str(tmp_path), split, k, captions=5, seed=i)
         for i, (split, k) in enumerate(keys.items())}
  # The prepared source lists its keys in another order than the pickles.
  order = {'train': ['t2', 't0', 't1'], 'test': ['s1', 's0']}
  monkeypatch.setattr(text_conditioning, '_split_keys', lambda data, split: order[split])
  config = ml_collections.ConfigDict({
      'data': {'train_split': 'train', 'eval_split': 'test'},
      'text': {'kind': 'pickle', 'pickle_dir': str(tmp_path),
               'embedding_file': 'char-CNN-RNN-embeddings.pickle', 'num_captions': 4}})
  cond = text_conditioning.TextConditioner(config, None, None)
  assert cond.dim == 4 and not cond.encodes_captions
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), rng=jnp.zeros((2,), jnp.uint32),
                               nets=cond.init_nets())
  batch = {'index': jnp.asarray([0, 2]), 'wrong_index': jnp.asarray([1, 1])}
  key = jax.random.key(3)
  got = cond.from_batch(state, batch, 'train', key)
  picks = np.asarray(jax.random.randint(key, (2, 4), 0, 5))
  rows = [2, 1]                                 # source rows 0 and 2 are 't2' and 't1'
  want = np.stack([emb['train'][r, picks[i]].mean(0) for i, r in enumerate(rows)])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
  wrong = cond.from_batch(state, {'index': batch['wrong_index']}, 'test', key)
  np.testing.assert_allclose(np.asarray(wrong)[0], emb['test'][0, picks[0]].mean(0), rtol=1e-6)
  with pytest.raises(errors.ConfigError, match='cannot encode new captions'):
    cond.from_ids(state, None, None)


# --- the trainer -------------------------------------------------------------


def test_tiny_char_cnn_rnn_training_lowers_the_joint_loss():
  config = tiny_configs.load_config('char_cnn_rnn', 'demo')
  tiny_configs.apply(config, {'model.emb_dim': 8, 'model.cnn_dim': 8, 'model.tiny_width': 4,
                              'data.image_sizes': (32,), 'train.batch_size': 6,
                              'optim.lr': 3e-3})
  vocab = text_lib.Vocab(['<end>', 'red', 'blue', 'circle', 'square', 'a', 'green', 'star'])
  method = trainer.CharCnnRnnMethod(config, vocab, 60)
  rng = np.random.default_rng(0)
  # Caption i names image i's (constant) colour: learnable in a few steps.
  colours = np.asarray([1, 2, 6, 1, 2, 6])
  rgb = {1: (255, 0, 0), 2: (0, 0, 255), 6: (0, 255, 0)}
  batch = {
      'image32': jnp.asarray(np.stack([np.broadcast_to(rgb[c], (32, 32, 3)) for c in colours])
                             + rng.integers(0, 20, (6, 32, 32, 3)), jnp.uint8),
      'caption': jnp.asarray(np.stack([[5, c, 3] for c in colours]), jnp.int32),
      'caption_len': jnp.full((6,), 3, jnp.int32),
      'class_id': jnp.asarray(colours, jnp.int32)}
  state = jax.jit(method.init_state)(jax.random.key(0))
  step = jax.jit(method.train_step)
  losses = []
  for _ in range(12):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.8 * losses[0], losses
  out = jax.jit(method.eval_step)(state, batch)
  assert np.isfinite(float(out['loss']))


def test_load_text_encoder_refuses_a_missing_or_foreign_run(tmp_path):
  with pytest.raises(errors.CheckpointError, match='config.json missing'):
    trainer.load_text_encoder(str(tmp_path))
  (tmp_path / 'config.json').write_text('{"method": "damsm"}')
  with pytest.raises(errors.CheckpointError, match='not a char_cnn_rnn'):
    trainer.load_text_encoder(str(tmp_path))
