"""STREAM (MirrorGAN's captioner): loss formula, a torch decoder of the
reference description, ResNet-152 size and conversion, and that it learns.

The torch decoder is CAPTION_RNN as reference/attngan_family.md §5.3 describes
it: inputs [feature, embed(w_1), ..., embed(w_T)] packed with the lengths,
LSTM, linear; targets the packed captions; CrossEntropyLoss (mean over the
packed tokens).
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from t2ijax import errors
from t2ijax.models import stream
from t2ijax.trainers import stream as stream_trainer
from tests import tiny_configs


def _key(seed):
  return jax.random.key(seed, impl='rbg')


def test_caption_loss_is_the_mean_cross_entropy_of_real_tokens():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
  captions = rng.integers(1, 5, size=(3, 4))
  lengths = np.array([4, 2, 1])
  out = stream.caption_loss(jnp.asarray(logits), jnp.asarray(captions),
                            jnp.asarray(lengths))
  terms, hits = [], []
  for b in range(3):
    for t in range(lengths[b]):
      row = logits[b, t].astype(np.float64)
      terms.append(np.log(np.sum(np.exp(row))) - row[captions[b, t]])
      hits.append(np.argmax(row) == captions[b, t])
  np.testing.assert_allclose(out['loss'], np.mean(terms), rtol=1e-5)
  np.testing.assert_allclose(out['token_accuracy'], np.mean(hits), rtol=1e-6)


def _torch_lstm_from_flax(cell_params, input_size, hidden):
  """torch LSTM weights from a flax LSTMCell's (the converter's mapping)."""
  lstm = torch.nn.LSTM(input_size, hidden, batch_first=True)
  gates = 'ifgo'
  w_ih = np.concatenate([cell_params[f'i{g}']['kernel'].T for g in gates])
  w_hh = np.concatenate([cell_params[f'h{g}']['kernel'].T for g in gates])
  bias = np.concatenate([cell_params[f'h{g}']['bias'] for g in gates])
  with torch.no_grad():
    lstm.weight_ih_l0.copy_(torch.from_numpy(w_ih))
    lstm.weight_hh_l0.copy_(torch.from_numpy(w_hh))
    lstm.bias_ih_l0.copy_(torch.from_numpy(bias))
    lstm.bias_hh_l0.zero_()
  return lstm


def test_decoder_and_loss_match_torch_description():
  n_words, embed, hidden, length = 11, 6, 8, 5
  decoder = stream.CaptionDecoder(n_words, embed, hidden)
  rng = np.random.default_rng(1)
  features = rng.normal(size=(3, embed)).astype(np.float32)
  lengths = np.array([5, 3, 2])          # sorted, as packing requires
  captions = rng.integers(1, n_words, size=(3, length))
  captions[np.arange(length)[None, :] >= lengths[:, None]] = 0
  variables = decoder.init(_key(0), features, captions)
  logits = decoder.apply(variables, features, captions)
  ours = stream.caption_loss(logits, captions, lengths)['loss']

  p = jax.tree.map(np.asarray, variables['params'])
  emb = torch.nn.Embedding(n_words, embed)
  lin = torch.nn.Linear(hidden, n_words)
  with torch.no_grad():
    emb.weight.copy_(torch.from_numpy(p['embed']['embedding']))
    lin.weight.copy_(torch.from_numpy(p['linear']['kernel'].T.copy()))
    lin.bias.copy_(torch.from_numpy(p['linear']['bias']))
  lstm = _torch_lstm_from_flax(p['lstm']['cell'], embed, hidden)
  pack = torch.nn.utils.rnn.pack_padded_sequence
  with torch.no_grad():
    caps = torch.from_numpy(captions)
    inputs = torch.cat([torch.from_numpy(features)[:, None], emb(caps)], 1)
    packed = pack(inputs, torch.from_numpy(lengths), batch_first=True)
    outputs = lin(lstm(packed)[0].data)
    targets = pack(caps, torch.from_numpy(lengths), batch_first=True).data
    expected = torch.nn.functional.cross_entropy(outputs, targets)
    # Logits per real step, in the same packed (time-major) order.
    ours_packed = pack(torch.from_numpy(np.asarray(logits)),
                       torch.from_numpy(lengths), batch_first=True).data
  np.testing.assert_allclose(ours, expected.item(), rtol=1e-5)
  np.testing.assert_allclose(ours_packed.numpy(), outputs.numpy(), rtol=1e-4,
                             atol=1e-5)


def test_decoder_is_causal():
  decoder = stream.CaptionDecoder(7, 4, 6)
  features = jnp.ones((1, 4))
  captions = jnp.array([[1, 2, 3, 4]])
  variables = decoder.init(_key(0), features, captions)
  embedded = decoder.apply(variables, captions, method=lambda m, c: m.embed(c))

  def logits(embedded_words):
    # The decoder's logits as a function of the embedded words.
    inputs = jnp.concatenate([features[:, None], embedded_words[:, :-1]], 1)
    return decoder.apply(variables, inputs,
                         method=lambda m, x: m.linear(m.lstm(x)))[0].sum(-1)

  jacobian = jax.jacrev(logits)(embedded)           # (step, 1, word, embed)
  used = np.abs(np.asarray(jacobian[:, 0])).sum(-1) > 0
  # Step t (which predicts word t) sees words 0..t-1, never word t or later.
  np.testing.assert_array_equal(used, np.tril(np.ones((4, 4), bool), -1))


def test_resnet152_size_and_torchvision_conversion():
  variables = jax.eval_shape(lambda: stream.ResNet152().init(
      _key(0), jnp.zeros((1, 224, 224, 3))))
  # torchvision resnet152: 60,192,808 parameters, of which fc 2048*1000+1000.
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))
  assert count == 60_192_808 - 2_049_000
  # A state dict with torchvision's names and shapes, from ours.
  flat = flax.traverse_util.flatten_dict(variables['params'], sep='/')
  stats = flax.traverse_util.flatten_dict(variables['batch_stats'], sep='/')
  state_dict = {}
  for path, value in {**flat, **stats}.items():
    *scope, layer, leaf = path.split('/')
    # layer3_35/conv2 -> layer3.35.conv2; downsample_{conv,bn} -> downsample.{0,1}
    key = '.'.join([s.replace('_', '.') for s in scope] + [layer])
    key = key.replace('downsample_conv', 'downsample.0').replace(
        'downsample_bn', 'downsample.1')
    torch_leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
                  'mean': 'running_mean', 'var': 'running_var'}[leaf]
    shape = value.shape
    if leaf == 'kernel':
      shape = (shape[3], shape[2], shape[0], shape[1])
    if key == 'conv1':
      key = 'resnet.0'      # the tutorial encoder's name for it is accepted too
    state_dict[key + '.' + torch_leaf] = np.zeros(shape, np.float32)
  state_dict['fc.weight'] = np.zeros((1000, 2048), np.float32)
  assert 'layer3.35.conv2.weight' in state_dict
  assert 'layer2.0.downsample.0.weight' in state_dict
  converted = stream.resnet_variables_from_state_dict(state_dict)
  assert jax.tree.map(np.shape, converted) == jax.tree.map(
      lambda x: x.shape, dict(variables))
  del state_dict['layer4.2.bn3.running_var']
  with pytest.raises(KeyError, match='layer4.2.bn3.running_var'):
    stream.resnet_variables_from_state_dict(state_dict)


def _tiny_stream_config():
  config = tiny_configs.load_config('stream', 'demo')
  tiny_configs.apply(config, {
      'data.image_sizes': (16,), 'data.max_words': 6, 'model.n_words': 12,
      'model.embed_size': 16, 'model.hidden_size': 32, 'model.tiny_width': 4,
      'optim.lr': 1e-2})
  return config


def test_stream_loss_falls_on_a_tiny_batch():
  config = _tiny_stream_config()
  method = stream_trainer.StreamMethod(config, vocab=None, num_train_examples=8)
  rng = np.random.default_rng(0)
  lengths = rng.integers(2, 7, size=8)
  captions = rng.integers(1, 12, size=(8, 6))
  captions[np.arange(6)[None, :] >= lengths[:, None]] = 0
  batch = {'image16': jnp.asarray(rng.integers(0, 256, (8, 16, 16, 3)), jnp.uint8),
           'caption': jnp.asarray(captions, jnp.int32),
           'caption_len': jnp.asarray(lengths, jnp.int32)}
  state = method.init_state(_key(0))
  step = jax.jit(method.train_step)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(metrics['token_accuracy']) > 0.5


def test_frozen_resnet_needs_weights_and_missing_run_says_how():
  config = tiny_configs.load_config('stream', 'cub')
  config.model.n_words = 12
  method = stream_trainer.StreamMethod(config, vocab=None, num_train_examples=8)
  with pytest.raises(errors.ConfigError, match='resnet_weights'):
    method.load_pretrained(None)
  with pytest.raises(errors.CheckpointError, match='configs/stream.py:cub'):
    stream_trainer.load_frozen('/nonexistent/stream_run', variant='cub')


def test_greedy_decoding_agrees_with_teacher_forcing_on_its_own_words():
  decoder = stream.CaptionDecoder(9, 4, 6)
  features = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4)), jnp.float32)
  variables = decoder.init(_key(0), features, jnp.ones((2, 5), jnp.int32))
  ids = decoder.apply(variables, features, 5, method=decoder.greedy)
  logits = decoder.apply(variables, features, ids)
  # Fed its own words, the teacher-forced decoder picks them again.
  np.testing.assert_array_equal(jnp.argmax(logits, -1), ids)
