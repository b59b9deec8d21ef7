"""Tests of the DAMSM encoders, losses and PyTorch checkpoint conversion.

The references are written here from the AttnGAN description: a torch
RNN_ENCODER that packs a length-sorted batch, and a NumPy per-caption loop of
the word and sentence losses (each caption sliced to its own length).
"""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import flax
import pytest
import torch

from t2ijax import errors
from t2ijax.convert import torch_damsm
from t2ijax.encoders import damsm
from t2ijax.losses import damsm as damsm_losses

GAMMA1, GAMMA2, GAMMA3 = 4.0, 5.0, 10.0


def _key(seed):
  # With jax_threefry_partitionable (the default), XLA:CPU takes seconds to
  # compile each threefry draw; 'rbg' keys compile in a fraction of that.
  return jax.random.key(seed, impl='rbg')


# --- Torch reference text encoder --------------------------------------------


class TorchRnnEncoder(torch.nn.Module):
  """Official RNN_ENCODER structure: Embedding -> Dropout -> packed BiLSTM."""

  def __init__(self, n_words, embedding_dim, nef):
    super().__init__()
    self.encoder = torch.nn.Embedding(n_words, embedding_dim)
    self.drop = torch.nn.Dropout(0.5)
    self.rnn = torch.nn.LSTM(embedding_dim, nef // 2, 1, batch_first=True,
                             bidirectional=True)

  def forward(self, captions, lengths):
    """(B, T) ids, lengths sorted descending -> (B, T_max, nef), (B, nef)."""
    batch = captions.shape[0]
    embedded = self.drop(self.encoder(captions))
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        embedded, lengths.tolist(), batch_first=True)
    hidden = self.rnn.hidden_size
    zeros = torch.zeros(2, batch, hidden)
    output, (h_n, _) = self.rnn(packed, (zeros, zeros.clone()))
    words = torch.nn.utils.rnn.pad_packed_sequence(output, batch_first=True)[0]
    # h_n is (directions, B, H); the sentence is [forward, backward] per item.
    sentence = h_n.transpose(0, 1).reshape(batch, 2 * hidden)
    return words, sentence


def _torch_text_encoder(n_words=30, embedding_dim=12, nef=16, seed=0):
  torch.manual_seed(seed)
  model = TorchRnnEncoder(n_words, embedding_dim, nef).eval()
  return model


def _padded_captions(lengths, total_steps, n_words, seed):
  """Random ids in [1, n_words) up to each length, 0 after."""
  rng = np.random.default_rng(seed)
  captions = np.zeros((len(lengths), total_steps), np.int64)
  for row, length in enumerate(lengths):
    captions[row, :length] = rng.integers(1, n_words, length)
  return captions


@pytest.fixture(scope='module')
def text_pair():
  """A torch encoder, its converted Flax twin and a sorted batch."""
  n_words, embedding_dim, nef = 30, 12, 16
  model = _torch_text_encoder(n_words, embedding_dim, nef)
  variables = torch_damsm.text_encoder_variables_from_state_dict(
      model.state_dict())
  flax_model = damsm.TextEncoder(n_words, embedding_dim, nef)
  lengths = np.array([7, 5, 5, 3, 1])
  # Padded past the longest caption: Flax keeps T, torch trims to max length.
  captions = _padded_captions(lengths, 9, n_words, seed=1)
  with torch.no_grad():
    words, sentence = model(torch.from_numpy(captions),
                            torch.from_numpy(lengths))
  # One jitted apply serves every test (eager dispatch is slow on CPU).
  apply = jax.jit(flax_model.apply, static_argnames='deterministic')
  return dict(apply=apply, variables=variables, captions=captions,
              lengths=lengths, words=words.numpy(), sentence=sentence.numpy())


def _apply_text(pair, captions, lengths, **kwargs):
  return pair['apply'](pair['variables'], jnp.asarray(captions),
                       jnp.asarray(lengths), **kwargs)


def test_text_encoder_matches_torch_packed_lstm(text_pair):
  out = _apply_text(text_pair, text_pair['captions'], text_pair['lengths'])
  t_max = text_pair['words'].shape[1]
  assert out['words'].shape == (5, 9, 16)
  np.testing.assert_allclose(out['words'][:, :t_max], text_pair['words'],
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out['sentence'], text_pair['sentence'],
                             atol=1e-5, rtol=1e-5)


def test_text_encoder_padded_steps_are_exactly_zero(text_pair):
  out = _apply_text(text_pair, text_pair['captions'], text_pair['lengths'])
  words = np.asarray(out['words'])
  for row, length in enumerate(text_pair['lengths']):
    assert np.all(words[row, length:] == 0.0)
    assert np.all(np.abs(words[row, :length]).sum(-1) > 0)


def test_text_encoder_needs_no_sorting(text_pair):
  order = np.array([3, 0, 4, 2, 1])
  out = _apply_text(text_pair, text_pair['captions'][order],
                    text_pair['lengths'][order])
  t_max = text_pair['words'].shape[1]
  np.testing.assert_allclose(out['words'][:, :t_max],
                             text_pair['words'][order], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out['sentence'], text_pair['sentence'][order],
                             atol=1e-5, rtol=1e-5)


def test_text_encoder_official_sizes_and_param_names():
  model = damsm.TextEncoder(n_words=50)
  captions = jnp.ones((2, 4), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), captions,
                             jnp.array([4, 2]))
  params = variables['params']
  assert set(params) == {'encoder', 'rnn_fwd', 'rnn_bwd'}
  assert params['encoder']['embedding'].shape == (50, 300)
  cell = params['rnn_bwd']['cell']
  assert set(cell) == {'ii', 'if', 'ig', 'io', 'hi', 'hf', 'hg', 'ho'}
  assert set(cell['ii']) == {'kernel'} and cell['ii']['kernel'].shape == (300,
                                                                          128)
  assert cell['hg']['kernel'].shape == (128, 128)
  assert cell['hg']['bias'].shape == (128,)


def test_text_encoder_dropout_only_when_not_deterministic(text_pair):
  captions, lengths = text_pair['captions'], text_pair['lengths']
  eval_out = _apply_text(text_pair, captions, lengths)
  train_out = _apply_text(text_pair, captions, lengths, deterministic=False,
                          rngs={'dropout': _key(0)})
  assert not np.allclose(eval_out['sentence'], train_out['sentence'])
  # Dropout never leaks into padded steps.
  assert np.all(np.asarray(train_out['words'])[4, 1:] == 0.0)


def test_text_converter_reports_missing_and_unexpected_keys():
  state_dict = dict(_torch_text_encoder().state_dict())
  del state_dict['rnn.bias_hh_l0_reverse']
  state_dict['module.encoder.weight'] = state_dict['encoder.weight']
  with pytest.raises(errors.CheckpointError,
                     match=r"missing keys \['rnn.bias_hh_l0_reverse'\].*"
                     r"unexpected keys \['module.encoder.weight'\]"):
    torch_damsm.text_encoder_variables_from_state_dict(state_dict)


# --- NumPy per-caption reference of the losses -------------------------------


def _np_log_softmax(x, axis):
  shifted = x - np.max(x, axis=axis, keepdims=True)
  return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _np_softmax(x, axis):
  return np.exp(_np_log_softmax(x, axis))


def _np_cross_entropy(scores):
  return -np.mean(np.diagonal(_np_log_softmax(scores, axis=1)))


def _np_class_mask(class_ids):
  """mask[i, j]: image/caption j shares caption i's class and j != i."""
  mask = class_ids[:, None] == class_ids[None, :]
  np.fill_diagonal(mask, False)
  return mask


def reference_words_loss(words_bdt, lengths, regions_bdhw, class_ids):
  """The official procedure, caption by caption, in float64, NCHW layout."""
  batch, dim, height, width = regions_bdhw.shape
  context = regions_bdhw.reshape(batch, dim, height * width)  # (B, D, N)
  columns, attn_maps = [], []
  for i in range(batch):
    length = lengths[i]
    word = np.repeat(words_bdt[i:i + 1, :, :length], batch, axis=0)  # (B,D,L)
    attn = np.einsum('bdn,bdl->bnl', context, word)
    attn = _np_softmax(attn, axis=2)                    # over words
    attn = np.transpose(attn, (0, 2, 1))                # (B, L, N)
    attn = _np_softmax(attn * GAMMA1, axis=2)           # over regions
    weighted = np.einsum('bdn,bln->bdl', context, attn)  # (B, D, L)
    attn_maps.append(attn[i].reshape(length, height, width))
    dots = np.sum(word * weighted, axis=1)
    norms = np.linalg.norm(word, axis=1) * np.linalg.norm(weighted, axis=1)
    cosine = dots / np.maximum(norms, 1e-8)            # (B, L)
    columns.append(np.log(np.sum(np.exp(GAMMA2 * cosine), axis=1)))
  scores = np.stack(columns, axis=1) * GAMMA3          # [image j, caption i]
  scores[_np_class_mask(class_ids)] = -np.inf
  return (_np_cross_entropy(scores), _np_cross_entropy(scores.T), attn_maps)


def reference_sentence_loss(img_global, sentence, class_ids):
  dots = img_global @ sentence.T
  norms = (np.linalg.norm(img_global, axis=1)[:, None]
           * np.linalg.norm(sentence, axis=1)[None, :])
  scores = dots / np.maximum(norms, 1e-8) * GAMMA3
  scores[_np_class_mask(class_ids)] = -np.inf
  return _np_cross_entropy(scores), _np_cross_entropy(scores.T)


@pytest.fixture(scope='module')
def loss_batch():
  rng = np.random.default_rng(0)
  batch, steps, dim, side = 6, 8, 16, 4
  lengths = np.array([8, 3, 5, 1, 8, 6])
  words = rng.normal(size=(batch, steps, dim)).astype(np.float32)
  # Garbage beyond each length: the loss must ignore it, not rely on zeros.
  regions = rng.normal(size=(batch, side, side, dim)).astype(np.float32)
  class_ids = np.array([3, 1, 3, 2, 1, 3])
  return dict(words=words, lengths=lengths, regions=regions,
              class_ids=class_ids,
              img_global=rng.normal(size=(batch, dim)).astype(np.float32),
              sentence=rng.normal(size=(batch, dim)).astype(np.float32))


# Jitted once per signature: eager dispatch dominates these tests on CPU.
_jit_words_loss = jax.jit(functools.partial(
    damsm_losses.words_loss, gamma1=GAMMA1, gamma2=GAMMA2, gamma3=GAMMA3))


def _words_loss(batch, words=None, class_ids='default'):
  class_ids = batch['class_ids'] if class_ids == 'default' else class_ids
  return _jit_words_loss(
      jnp.asarray(batch['words'] if words is None else words),
      jnp.asarray(batch['lengths']), jnp.asarray(batch['regions']),
      None if class_ids is None else jnp.asarray(class_ids))


@pytest.mark.parametrize('class_ids', ['default', None])
def test_words_loss_matches_per_caption_loop(loss_batch, class_ids):
  loss0, loss1, attn_maps = _words_loss(loss_batch, class_ids=class_ids)
  ref_class_ids = (np.arange(6) if class_ids is None
                   else loss_batch['class_ids'])
  ref0, ref1, ref_maps = reference_words_loss(
      loss_batch['words'].transpose(0, 2, 1).astype(np.float64),
      loss_batch['lengths'],
      loss_batch['regions'].transpose(0, 3, 1, 2).astype(np.float64),
      ref_class_ids)
  np.testing.assert_allclose(loss0, ref0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss1, ref1, rtol=1e-5, atol=1e-5)
  assert attn_maps.shape == (6, 8, 4, 4)
  for i, length in enumerate(loss_batch['lengths']):
    np.testing.assert_allclose(attn_maps[i, :length], ref_maps[i], atol=1e-6)
    assert np.all(np.asarray(attn_maps[i, length:]) == 0.0)


def test_words_loss_class_mask_changes_the_loss(loss_batch):
  masked = _words_loss(loss_batch)
  unmasked = _words_loss(loss_batch, class_ids=None)
  assert not np.isclose(masked[0], unmasked[0])


@jax.jit
def _words_loss_grads(words, lengths, regions, class_ids):

  def total(words, regions):
    loss0, loss1, _ = damsm_losses.words_loss(
        words, lengths, regions, class_ids, GAMMA1, GAMMA2, GAMMA3)
    return loss0 + loss1

  return jax.grad(total, argnums=(0, 1))(words, regions)


@pytest.mark.parametrize('padding', ['garbage', 'zeros'])
def test_words_loss_gradient_is_zero_at_padded_words(loss_batch, padding):
  # Zero padding (as the text encoder emits) hits the norm at 0, where a
  # naive sqrt gradient is NaN.
  words = loss_batch['words'].copy()
  if padding == 'zeros':
    for i, length in enumerate(loss_batch['lengths']):
      words[i, length:] = 0.0
  grad_words, grad_regions = _words_loss_grads(
      jnp.asarray(words), jnp.asarray(loss_batch['lengths']),
      jnp.asarray(loss_batch['regions']), jnp.asarray(loss_batch['class_ids']))
  grad_words = np.asarray(grad_words)
  assert np.all(np.isfinite(grad_words))
  assert np.all(np.isfinite(np.asarray(grad_regions)))
  for i, length in enumerate(loss_batch['lengths']):
    assert np.all(grad_words[i, length:] == 0.0)
    assert np.any(grad_words[i, :length] != 0.0)


def test_sentence_loss_matches_reference(loss_batch):
  loss0, loss1 = jax.jit(damsm_losses.sentence_loss, static_argnums=3)(
      jnp.asarray(loss_batch['img_global']),
      jnp.asarray(loss_batch['sentence']),
      jnp.asarray(loss_batch['class_ids']), GAMMA3)
  ref0, ref1 = reference_sentence_loss(
      loss_batch['img_global'].astype(np.float64),
      loss_batch['sentence'].astype(np.float64), loss_batch['class_ids'])
  np.testing.assert_allclose(loss0, ref0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss1, ref1, rtol=1e-5, atol=1e-5)


def test_word_region_attention_rows_sum_to_one():
  rng = np.random.default_rng(3)
  words = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  regions = jnp.asarray(rng.normal(size=(2, 9, 8)), jnp.float32)
  mask = jnp.array([[True] * 5, [True, True, False, False, False]])
  context, attn = jax.jit(damsm_losses.word_region_attention,
                          static_argnums=2)(words, regions, GAMMA1, mask)
  assert context.shape == (2, 5, 8) and attn.shape == (2, 5, 9)
  np.testing.assert_allclose(attn.sum(-1), mask.astype(np.float32), atol=1e-6)
  assert np.all(np.asarray(context[1, 2:]) == 0.0)


def test_retrieval_top1():
  codes = jnp.eye(4)
  sentences = jnp.eye(4).at[3].set(jnp.array([1.0, 0.0, 0.0, 0.1]))
  result = jax.jit(damsm_losses.retrieval_top1)(codes, sentences)
  # Image 3's best sentence is still 3 (cos 0.1 vs 0); sentence 3 picks image 0.
  assert float(result['image_to_text']) == 1.0
  assert float(result['text_to_image']) == 0.75


# --- Image encoder ------------------------------------------------------------


_TINY = dict(backbone='tiny', nef=32, tiny_width=8)


@pytest.fixture(scope='module')
def tiny_variables():
  """One init serves every variant: the flags do not change the variables."""
  images = jnp.zeros((2, 64, 64, 3))
  return jax.jit(damsm.ImageEncoder(**_TINY).init)(_key(0), images)


def _tiny_images():
  return jnp.asarray(
      np.random.default_rng(1).normal(size=(2, 64, 64, 3)), jnp.float32)


def test_tiny_image_encoder_shapes_and_head_params(tiny_variables):
  out = jax.jit(damsm.ImageEncoder(**_TINY).apply)(tiny_variables,
                                                   _tiny_images())
  assert out['local'].shape == (2, 8, 8, 32)
  assert out['global'].shape == (2, 32)
  params = tiny_variables['params']
  assert set(params) == {'backbone', 'emb_features', 'emb_cnn_code'}
  assert set(params['emb_features']) == {'kernel'}
  assert params['emb_features']['kernel'].shape == (1, 1, 32, 32)
  assert params['emb_cnn_code']['kernel'].shape == (64, 32)
  assert np.abs(params['emb_features']['kernel']).max() <= 0.1
  assert np.abs(params['emb_cnn_code']['kernel']).max() <= 0.1
  assert np.abs(params['emb_cnn_code']['bias']).max() <= 1 / np.sqrt(64)


@pytest.mark.parametrize('trainable', [False, True])
def test_frozen_backbone_gets_no_gradient(tiny_variables, trainable):
  model = damsm.ImageEncoder(backbone_trainable=trainable, **_TINY)

  def total(params):
    out, _ = model.apply({**tiny_variables, 'params': params}, _tiny_images(),
                         train=True, mutable=['batch_stats'])
    return jnp.sum(out['local']) + jnp.sum(out['global'])

  grads = jax.jit(jax.grad(total))(tiny_variables['params'])
  backbone_norm = sum(float(jnp.abs(g).sum())
                      for g in jax.tree.leaves(grads['backbone']))
  assert (backbone_norm > 0) == trainable
  assert float(jnp.abs(grads['emb_cnn_code']['kernel']).sum()) > 0


@pytest.mark.parametrize('bn_train', [False, True])
def test_frozen_backbone_batchnorm_mode(tiny_variables, bn_train):
  model = damsm.ImageEncoder(backbone_bn_train=bn_train, **_TINY)
  apply = jax.jit(functools.partial(model.apply, train=True,
                                    mutable=['batch_stats']))
  _, updates = apply(tiny_variables, _tiny_images())
  before = jax.tree.leaves(tiny_variables['batch_stats'])
  after = jax.tree.leaves(updates['batch_stats'])
  changed = any(not np.allclose(a, b) for a, b in zip(before, after))
  assert changed == bn_train


def test_heads_converter_matches_torch_heads(tiny_variables):
  torch.manual_seed(0)
  conv = torch.nn.Conv2d(32, 32, 1, bias=False)
  linear = torch.nn.Linear(64, 32)
  state_dict = {'emb_features.weight': conv.weight.detach(),
                'emb_cnn_code.weight': linear.weight.detach(),
                'emb_cnn_code.bias': linear.bias.detach(),
                'Mixed_6e.branch1x1.conv.weight': torch.zeros(1)}
  heads = torch_damsm.image_encoder_heads_from_state_dict(state_dict)['params']
  variables = {**tiny_variables,
               'params': {**tiny_variables['params'], **heads}}
  images = _tiny_images()
  out = jax.jit(damsm.ImageEncoder(**_TINY).apply)(variables, images)

  features = jax.jit(damsm.TinyBackbone(8).apply, static_argnums=2)(
      {'params': variables['params']['backbone'],
       'batch_stats': variables['batch_stats']['backbone']}, images, False)
  with torch.no_grad():
    local = conv(torch.tensor(
        np.asarray(features['local']).transpose(0, 3, 1, 2)))
    code = linear(torch.tensor(np.asarray(features['global'])))
  np.testing.assert_allclose(out['local'], local.numpy().transpose(0, 2, 3, 1),
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out['global'], code.numpy(), atol=1e-5, rtol=1e-5)


def test_heads_converter_rejects_foreign_and_missing_keys():
  state_dict = {'emb_features.weight': np.zeros((16, 32, 1, 1)),
                'emb_cnn_code.weight': np.zeros((16, 64)),
                'fc.weight': np.zeros((3, 3))}
  with pytest.raises(errors.CheckpointError,
                     match=r"missing keys \['emb_cnn_code.bias'\].*"
                     r"unexpected keys \['fc.weight'\]"):
    torch_damsm.image_encoder_heads_from_state_dict(state_dict)


def test_unknown_backbone_is_rejected():
  with pytest.raises(ValueError, match='Unknown DAMSM backbone'):
    damsm.ImageEncoder(backbone='resnet').init(jax.random.key(0),
                                               jnp.zeros((1, 64, 64, 3)))


def _torch_key(path):
  """Torch CNN_ENCODER key of a Flax ImageEncoder variable path."""
  collection, *modules, leaf = path
  if modules[0] == 'backbone':
    modules = modules[1:]
  torch_leaf = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
                ('params', 'bias'): 'bias',
                ('batch_stats', 'mean'): 'running_mean',
                ('batch_stats', 'var'): 'running_var'}[collection, leaf]
  return '.'.join(modules + [torch_leaf])


def _torch_shape(shape):
  """Flax HWIO conv / (in, out) dense shape -> torch OIHW / (out, in)."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape))


@pytest.mark.skipif(
    importlib.util.find_spec('t2ijax.convert.torch_inception') is None,
    reason='t2ijax.convert.torch_inception not available')
def test_inception_image_encoder_shapes_and_full_conversion():
  model = damsm.ImageEncoder(backbone='inception_v3')
  images = jnp.zeros((1, 256, 256, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  out = jax.eval_shape(model.apply, variables, images)
  assert out['local'].shape == (1, 17, 17, 256)
  assert out['global'].shape == (1, 256)
  params = variables['params']
  assert params['emb_features']['kernel'].shape == (1, 1, 768, 256)
  assert params['emb_cnn_code']['kernel'].shape == (2048, 256)

  # A CNN_ENCODER-style state dict with one value per key, as torch shapes.
  flat = flax.traverse_util.flatten_dict(variables)
  state_dict = {_torch_key(path): np.full(_torch_shape(leaf.shape), index,
                                          np.float32)
                for index, (path, leaf) in enumerate(flat.items())}
  assert len(state_dict) == 473  # Keys of the official file (section 2.2).
  converted = torch_damsm.image_encoder_variables_from_state_dict(state_dict)
  converted = flax.traverse_util.flatten_dict(converted)
  assert set(converted) == set(flat)
  for index, (path, leaf) in enumerate(flat.items()):
    assert converted[path].shape == leaf.shape, path
    assert np.all(converted[path] == index), path
