"""config.precision.compute_dtype='bfloat16': bf16 matmuls, float32 state and losses."""

import collections
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax import parallel
from t2ijax import precision
from t2ijax.data import text
from t2ijax.trainers import loop
from t2ijax.trainers import stream as stream_trainer
from tests import param_trees
from tests import tiny_configs


def _op_dtypes(hlo: str) -> collections.Counter:
  """(op, result dtype) counts of the convolutions and matmuls in StableHLO text."""
  counts = collections.Counter()
  for line in hlo.splitlines():
    match = re.search(r'stablehlo\.(convolution|dot_general).*-> tensor<[^>]*x(bf16|f32)>', line)
    if match:
      counts[match.groups()] += 1
  return counts


class _DenseNorm(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return nn.Dense(4)(jax.nn.relu(x))


def test_apply_computes_in_bf16_and_returns_float32():
  model = _DenseNorm()
  x = jax.random.normal(jax.random.key(0), (32, 8))
  variables = model.init(jax.random.key(1), x, train=False)

  def loss(params, dtype):
    out, new = precision.apply(model, dict(variables, params=params), x, train=True,
                               mutable=['batch_stats'], compute_dtype=dtype)
    return jnp.mean(out ** 2), (out, new)

  grads = {}
  for dtype in ('float32', 'bfloat16'):
    grads[dtype], (out, new) = jax.grad(loss, has_aux=True)(variables['params'], dtype)
    assert out.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(grads[dtype]))
  # The same gradient to bf16's ~3 significant digits (of the largest entry:
  # the first bias's gradient is ~0 in float32, BatchNorm cancels it).
  scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(grads['float32']))
  for a, b in zip(jax.tree.leaves(grads['float32']), jax.tree.leaves(grads['bfloat16'])):
    np.testing.assert_allclose(b, a, atol=3e-2 * scale)
  hlo = jax.jit(lambda p: loss(p, 'bfloat16')).lower(variables['params']).as_text()
  assert _op_dtypes(hlo) == {('dot_general', 'bf16'): 2}



def test_dmgan_train_step_in_bf16(damsm_dir, data_dir, tmp_path):
  config = tiny_configs.gan('dmgan', data_dir, damsm_dir)
  config.precision.compute_dtype = 'bfloat16'
  setup = loop.Setup(config, str(tmp_path), jax.devices()[:1])
  state, _ = setup.init_or_restore()
  step = setup.jit_train_step()
  local = next(iter(setup.train_batches(0, 1)))
  with jax.set_mesh(setup.mesh):
    batch = parallel.global_batch(local, setup.mesh)
    lowered = step.lower(state, batch)
    before = jax.device_get(state.nets['G'].params)   # the step donates the state
    new_state, metrics = lowered.compile()(state, batch)
  # G's and D's convolutions run in bf16; the frozen DAMSM image encoder of
  # the DAMSM loss stays float32 (as do the text encoder's LSTM, the
  # spectral-norm power iterations and the DAMSM attention: matmuls).
  counts = _op_dtypes(lowered.as_text())
  assert counts[('convolution', 'bf16')] > 5 * counts[('convolution', 'f32')] > 0, counts
  assert counts[('dot_general', 'bf16')] > 0, counts
  for key in ('D0_loss', 'D1_loss', 'G_loss', 'damsm_words'):
    assert np.isfinite(float(metrics[key])), key
  # The state stays float32 and the step moved it.
  assert {leaf.dtype for leaf in jax.tree.leaves(new_state.nets['G'])
          if jnp.issubdtype(leaf.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
  after = new_state.nets['G'].params
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))

  # Sampling in bf16 gives float32 images close to float32 sampling.
  words, sentence, mask = setup.method.encode_text(new_state, batch['caption'], batch['caption_len'])
  z = jax.random.normal(jax.random.key(3), (sentence.shape[0], config.model.z_dim))
  g = new_state.nets['G']
  images = {}
  for dtype in ('float32', 'bfloat16'):
    setup.method.compute_dtype = dtype
    out, _ = setup.method.generate(g, g.params, z, sentence, words, mask, jax.random.key(4),
                                   train=False)
    images[dtype] = out['images'][-1]
  assert images['bfloat16'].dtype == jnp.float32
  np.testing.assert_allclose(images['bfloat16'], images['float32'], atol=0.1)
  assert float(jnp.mean(jnp.abs(images['bfloat16'] - images['float32']))) < 0.02


# ---- every text-to-image method: one bf16 train step through the harness ----


def _stream_run(workdir, damsm_dir):
  """A finished STREAM run of random weights on the tiny GANs' vocabulary (for
  MirrorGAN), written without training or compiling one."""
  with open(os.path.join(damsm_dir, 'vocab.json')) as f:
    vocab = text.Vocab.from_json(f.read())
  config = tiny_configs.load_config('stream', 'demo')
  tiny_configs.apply(config, {
      'data.image_sizes': (16,), 'data.max_words': 8, 'model.n_words': len(vocab),
      'model.embed_size': 8, 'model.hidden_size': 8, 'model.tiny_width': 4,
      'train.num_steps': 1})
  param_trees.save_random_run(stream_trainer.StreamMethod(config, vocab, 8), config, vocab,
                              workdir, scale=0.1)
  return workdir


def _bf16_config(method, data_dir, damsm_dir, tmp_path):
  """The method's tiny config (one stage where it has several: compiles are the cost)."""
  if method == 'pixelcnn':
    from tests import test_pixelcnn_model
    return test_pixelcnn_model._class_config(data_dir), 'pixelcnn'
  if method in ('stackgan', 'stackganpp'):
    config = tiny_configs.load_config(method, 'demo')
    tiny_configs.apply(config, {
        'data.shapes.num_train': 32, 'data.shapes.num_test': 16,
        'data.captions_per_image': 3, 'data.max_words': 8, 'data.num_parallel_calls': 2,
        'model.ngf': 4, 'model.ndf': 4, 'model.ncf': 8, 'model.z_dim': 8, 'model.r_num': 1,
        'train.batch_size': 8, 'checkpoint.use_async': False,
        'data.image_sizes': (64,), 'model.num_stages': 1})
    config.data.data_dir, config.damsm.workdir = data_dir, damsm_dir
    return config, 'G'
  config = tiny_configs.gan(method, data_dir, damsm_dir)
  if method == 'dfgan':
    config.data.image_sizes = (32,)
    config.data.shapes.image_size = 32
  elif method in ('sdgan', 'mirrorgan'):
    config.data.image_sizes, config.model.num_stages = (64,), 1
  if method == 'mirrorgan':
    config.stream.workdir = _stream_run(str(tmp_path / 'stream'), damsm_dir)
  if method == 'gan_int_cls':
    config.model.update(nt=8, z_dim=8)
  return config, 'G'


# XLA:CPU's backend optimisations are most of a tiny step's compile time and
# change nothing checked here (the op dtypes are read before them).
_FAST_COMPILE = {'xla_backend_optimization_level': 0}


@pytest.mark.parametrize('method', ['dfgan', 'sdgan', 'mirrorgan', 'stackganpp', 'stackgan',
                                    'gan_int_cls', 'pixelcnn'])
def test_train_step_in_bf16(method, damsm_dir, data_dir, tmp_path):
  config, g_name = _bf16_config(method, data_dir, damsm_dir, tmp_path)
  config.precision.compute_dtype = 'bfloat16'
  setup = loop.Setup(config, str(tmp_path / 'run'), jax.devices()[:1])
  # setup.init_or_restore(), compiled as the step is.
  init = jax.jit(setup.method.init_state, out_shardings=setup.state_shardings)
  state = setup.method.load_pretrained(init.lower(setup.rng).compile(_FAST_COMPILE)(setup.rng))
  step = setup.jit_train_step()
  local = next(iter(setup.train_batches(0, 1)))
  with jax.set_mesh(setup.mesh):
    batch = parallel.global_batch(local, setup.mesh)
    lowered = step.lower(state, batch)
    before = jax.device_get(state.nets[g_name].params)   # the step donates the state
    new_state, metrics = lowered.compile(_FAST_COMPILE)(state, batch)
  # Most convolutions (G's and D's, the PixelCNN's) and matmuls run in bf16;
  # the frozen encoders (DAMSM, STREAM) stay float32.
  counts = _op_dtypes(lowered.as_text())
  assert counts[('convolution', 'bf16')] > counts[('convolution', 'f32')], counts
  assert counts[('convolution', 'bf16')] > 0 and counts[('dot_general', 'bf16')] > 0, counts
  # Losses (every metric) are float32 and finite; the state stays float32 and G moved.
  for key, value in jax.device_get(metrics).items():
    assert np.asarray(value).dtype == np.float32, key
    assert np.all(np.isfinite(value)), key
  for name, net in new_state.nets.items():
    assert {leaf.dtype for leaf in jax.tree.leaves(net)
            if jnp.issubdtype(leaf.dtype, jnp.floating)} <= {jnp.dtype(jnp.float32)}, name
  after = new_state.nets[g_name].params
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
