"""MirrorGAN: GLAM against the reference description, G's size, the trainer.

The torch GLAM below is written from reference/attngan_family.md §5.2 (word
attention as AttnGAN's §3.2 with the `repeat` mask of §3.3; sentence
attention: Linear(c) tiled over pixels, 1x1 conv of h * s', softmax over
channels, times s'), not from our code.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from t2ijax import errors
from t2ijax.data import text
from t2ijax.models import mirrorgan
from t2ijax.nn import attention
from t2ijax.nn import glam
from t2ijax.trainers import damsm as damsm_trainer
from t2ijax.trainers import loop
from t2ijax.trainers import mirrorgan as mirrorgan_trainer
from t2ijax.trainers import stream as stream_trainer
from tests import tiny_configs
from tests import param_trees




# --- Generator size and names (reference §5.2) ---------------------------------


def _abstract_generator(generator, batch=2, num_words=18, nef=256):
  inputs = (jnp.zeros((batch, 100)), jnp.zeros((batch, nef)),
            jnp.zeros((batch, num_words, nef)),
            jnp.ones((batch, num_words), bool))
  return jax.eval_shape(
      lambda: generator.init_with_output(param_trees.key(0), *inputs, ca_key=param_trees.key(1)))


def test_generator_count_shapes_and_names_match_reference():
  out, variables = _abstract_generator(mirrorgan.Generator(ngf=32, r_num=2))
  # 7,105,392 trainable parameters [run], = AttnGAN CUB's 7,084,592 plus
  # 2 x (32*32 + 100*32 + 32 + 96*64) for conv_sentence_vis, linear, conv.
  assert param_trees.count(variables['params']) == 7_105_392
  assert [x.shape for x in out['images']] == [
      (2, 64, 64, 3), (2, 128, 128, 3), (2, 256, 256, 3)]
  assert [x.shape for x in out['attention_maps']] == [
      (2, 64, 64, 18), (2, 128, 128, 18)]
  assert [x.shape for x in out['sentence_attention_maps']] == [
      (2, 64, 64, 32), (2, 128, 128, 32)]
  params = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(
      variables['params'], sep='/').items()}
  # torch key (shape) -> flax path: conv weights transposed to (kh, kw, I, O),
  # 1x1 convs on vectors and Linear to Dense (I, O).
  for stage in (2, 3):
    expected = {
        f'h_net{stage}/att/conv_context/kernel': (256, 32),       # (32,256,1,1)
        f'h_net{stage}/att/conv_sentence_vis/kernel': (32, 32),   # (32,32,1,1)
        f'h_net{stage}/att/linear/kernel': (100, 32),             # (32,100)
        f'h_net{stage}/att/linear/bias': (32,),
        f'h_net{stage}/conv/kernel': (1, 1, 96, 64),              # (64,96,1,1)
        f'h_net{stage}/residual_1/conv1/kernel': (3, 3, 64, 128),
        f'h_net{stage}/upsample/conv/kernel': (3, 3, 64, 64),
    }
    for path, shape in expected.items():
      assert params.get(path) == shape, path
    assert not any(p.startswith(f'h_net{stage}/conv/bias') for p in params)


# --- GLAM against formulas and a torch model of the description ----------------


def test_sentence_attention_matches_numpy_formula():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  s = rng.normal(size=(2, 5)).astype(np.float32)
  kernel = rng.normal(size=(5, 5)).astype(np.float32)
  weighted, weights = glam.sentence_channel_attention(
      jnp.asarray(h), jnp.asarray(s), lambda x: x @ kernel)
  # Per pixel: logits_d = sum_c h_c s_c K[c, d]; softmax over d; times s_d.
  logits = np.einsum('bhwc,cd->bhwd', h * s[:, None, None, :], kernel)
  expected_weights = np.exp(logits - logits.max(-1, keepdims=True))
  expected_weights /= expected_weights.sum(-1, keepdims=True)
  np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(weighted, expected_weights * s[:, None, None, :],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.sum(weights, -1), 1.0, rtol=1e-5)


def _torch_glam(h, c, words, padding, w_context, w_vis, w_linear, b_linear):
  """GLAttentionGeneral from the reference's description, NCHW."""
  batch, idf, ih, iw = h.shape
  num_queries, num_words = ih * iw, words.shape[2]
  target = h.reshape(batch, idf, num_queries).transpose(1, 2)
  source = torch.nn.functional.conv2d(words.unsqueeze(3), w_context).squeeze(3)
  logits = torch.bmm(target, source).reshape(batch * num_queries, num_words)
  logits = logits.masked_fill(padding.repeat(num_queries, 1), -float('inf'))
  attn = torch.softmax(logits, dim=1).reshape(batch, num_queries, num_words)
  attn = attn.transpose(1, 2)
  word_context = torch.bmm(source, attn).reshape(batch, idf, ih, iw)
  sentence = torch.nn.functional.linear(c, w_linear, b_linear)
  sentence = sentence.reshape(batch, idf, 1, 1).repeat(1, 1, ih, iw)
  mixed = torch.nn.functional.conv2d(h * sentence, w_vis)
  sent_att = torch.softmax(mixed, dim=1)
  return word_context, sentence * sent_att, attn.reshape(batch, -1, ih, iw), sent_att


@pytest.mark.parametrize('official_mask_bug', [True, False])
def test_glam_matches_torch_description(official_mask_bug):
  rng = np.random.default_rng(1)
  batch, height, width, channels, num_words, nef, ncf = 3, 4, 5, 6, 7, 8, 10
  h = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
  c = rng.normal(size=(batch, ncf)).astype(np.float32)
  lengths = np.array([7, 5, 2])
  mask = np.asarray(attention.word_mask_from_lengths(lengths, num_words))
  # Zero at padding, as the DAMSM encoder's outputs.
  words = (rng.normal(size=(batch, num_words, nef)) * mask[..., None]).astype(
      np.float32)
  module = glam.GlobalLocalAttention(official_mask_bug)
  variables = module.init(param_trees.key(0), h, c, words, mask)
  out = module.apply(variables, h, c, words, mask)
  p = jax.tree.map(np.asarray, variables['params'])
  weights = (torch.from_numpy(p['conv_context']['kernel'].T.copy())[:, :, None, None],
             torch.from_numpy(p['conv_sentence_vis']['kernel'].T.copy())[:, :, None, None],
             torch.from_numpy(p['linear']['kernel'].T.copy()),
             torch.from_numpy(p['linear']['bias']))
  to_t = lambda x: torch.from_numpy(x)

  def run_torch(rows):
    return _torch_glam(to_t(h[rows]).permute(0, 3, 1, 2), to_t(c[rows]),
                       to_t(words[rows]).permute(0, 2, 1), to_t(~mask[rows]),
                       *weights)

  with torch.no_grad():
    if official_mask_bug:
      expected = run_torch(slice(None))
    else:
      # Each caption's own mask = the torch code run one caption at a time.
      parts = [run_torch(slice(b, b + 1)) for b in range(batch)]
      expected = [torch.cat([p[i] for p in parts]) for i in range(4)]
  names = ('word_context', 'sentence_context', 'word_attention',
           'sentence_attention')
  for name, value in zip(names, expected):
    np.testing.assert_allclose(out[name], value.permute(0, 2, 3, 1).numpy(),
                               rtol=1e-5, atol=1e-5, err_msg=name)


def test_sentence_context_follows_the_ca_code_not_the_words():
  rng = np.random.default_rng(2)
  h = jnp.asarray(rng.normal(size=(2, 4, 4, 6)), jnp.float32)
  c = jnp.asarray(rng.normal(size=(2, 10)), jnp.float32)
  words = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  module = glam.GlobalLocalAttention()
  variables = module.init(param_trees.key(0), h, c, words)
  grad = jax.grad(lambda c, w: jnp.sum(module.apply(
      variables, h, c, w)['sentence_context']), argnums=(0, 1))(c, words)
  assert float(jnp.abs(grad[0]).sum()) > 0
  assert float(jnp.abs(grad[1]).sum()) == 0


# --- The trainer --------------------------------------------------------------
#
# The frozen DAMSM and STREAM runs are written straight from fresh parameters
# (config.json, vocab.json, a checkpoint): what MirrorGAN loads is the same,
# and no pretraining program has to compile. The demo's pretraining itself is
# the shared loop's (checked by its call below).

VOCAB = text.Vocab(['<end>', 'a', 'small', 'large', 'red', 'blue', 'circle',
                    'square', 'on', 'the', 'left', 'right'])


def _save_run(method_class, config, workdir):
  """A finished run of random weights, without compiling an init."""
  config.train.num_steps = 1
  param_trees.save_random_run(method_class(config, VOCAB, 8), config, VOCAB, workdir, scale=0.3)


def _tiny_mirrorgan(tmp_path):
  damsm = tiny_configs.load_config('damsm', 'demo')
  tiny_configs.apply(damsm, tiny_configs.DAMSM_FLAGS)
  tiny_configs.apply(damsm, {'model.n_words': len(VOCAB), 'data.max_words': 6})
  stream = tiny_configs.load_config('stream', 'demo')
  tiny_configs.apply(stream, {
      'data.image_sizes': (16,), 'data.max_words': 6, 'model.n_words': len(VOCAB),
      'model.embed_size': 8, 'model.hidden_size': 8, 'model.tiny_width': 4})
  _save_run(damsm_trainer.DamsmMethod, damsm, str(tmp_path / 'damsm'))
  _save_run(stream_trainer.StreamMethod, stream, str(tmp_path / 'stream'))
  config = tiny_configs.load_config('mirrorgan', 'demo')
  tiny_configs.apply(config, {
      'data.image_sizes': (64, 128), 'data.max_words': 6, 'model.ngf': 2,
      'model.ndf': 2, 'model.ncf': 4, 'model.z_dim': 4,
      'damsm.workdir': str(tmp_path / 'damsm'),
      'stream.workdir': str(tmp_path / 'stream')})
  return config


def _batch(rng, batch_size=4, max_words=6):
  lengths = np.array([6, 4, 3, 1])[:batch_size]
  captions = rng.integers(1, len(VOCAB), size=(batch_size, max_words))
  captions[np.arange(max_words)[None, :] >= lengths[:, None]] = 0
  out = {'caption': captions, 'caption_len': lengths,
         'wrong_caption': captions[::-1].copy(), 'wrong_caption_len': lengths[::-1].copy(),
         'class_id': np.arange(batch_size)}
  for size in (64, 128):
    out[f'image{size}'] = rng.integers(0, 256, (batch_size, size, size, 3))
  return {k: jnp.asarray(v, jnp.uint8 if k.startswith('image') else jnp.int32)
          for k, v in out.items()}


def _zero_heads(d_params):
  """D params whose logits no longer depend on the image (outlogits kernel 0)."""
  return {k: ({**v, 'outlogits': {**v['outlogits'],
                                  'kernel': jnp.zeros_like(v['outlogits']['kernel'])}}
              if k in ('UNCOND_DNET', 'COND_DNET') else v)
          for k, v in d_params.items()}


def test_train_step_runs_and_redescription_reaches_g(tmp_path):
  config = _tiny_mirrorgan(tmp_path)
  # D frozen (lr 0), so that below its zeroed heads stay zero in G's step.
  config.optim.d_lr = 0.0
  method = mirrorgan_trainer.MirrorGan(config, VOCAB, 8)
  state = jax.jit(method.init_state)(jax.random.key(1))
  # The frozen STREAM in the state is the saved one.
  np.testing.assert_array_equal(
      jax.tree.leaves(state.nets['stream_decoder'].params)[0],
      jax.tree.leaves(method.stream.decoder_variables['params'])[0])
  batch = _batch(np.random.default_rng(0))
  step = jax.jit(method.train_step)
  new_state, metrics = step(state, batch)
  for key in ('D0_loss', 'D1_loss', 'G_loss', 'redescription', 'kl'):
    assert np.isfinite(float(metrics[key])), key
  assert 'damsm_words' not in metrics        # LAMBDA 0: no DAMSM term officially
  # CE of an untrained captioner over 12 words, times 10.
  assert 5.0 < float(metrics['redescription']) < 50.0

  # With D's logits independent of the image, G's only image loss is the
  # re-description of the final image (KL reaches ca_net alone): it must
  # move every stage up to the final image, and not the first image head.
  nets = dict(state.nets)
  for name in ('D0', 'D1'):
    nets[name] = nets[name].replace(params=_zero_heads(nets[name].params))
  moved, _ = step(state.replace(nets=nets), batch)
  delta = lambda name, part: float(sum(
      jnp.abs(a - b).sum() for a, b in zip(
          jax.tree.leaves(moved.nets[name].params[part]),
          jax.tree.leaves(state.nets[name].params[part]))))
  for part in ('h_net1', 'h_net2', 'img_net2'):
    assert delta('G', part) > 0, part
  assert delta('G', 'img_net1') == 0
  # The frozen STREAM and DAMSM never move.
  for name in ('stream_encoder', 'stream_decoder', 'text_encoder'):
    for a, b in zip(jax.tree.leaves(new_state.nets[name].params),
                    jax.tree.leaves(state.nets[name].params)):
      np.testing.assert_array_equal(a, b)


def test_demo_pretrains_a_stream_into_the_workdir(tmp_path, monkeypatch):
  config = tiny_configs.load_config('mirrorgan', 'demo')
  config.damsm.workdir = str(tmp_path)     # the DAMSM part is the shared one
  config.data.data_dir = str(tmp_path / 'data')
  calls = []
  monkeypatch.setattr(loop, 'train_and_evaluate',
                      lambda c, w: calls.append((c, w)))
  mirrorgan_trainer.MirrorGan.prepare_run(config, str(tmp_path / 'run'))
  assert config.stream.workdir == str(tmp_path / 'run' / 'stream')
  (pretrain, workdir), = calls
  assert workdir == config.stream.workdir
  assert pretrain.method == 'stream'
  assert pretrain.data.data_dir == config.data.data_dir
  assert pretrain.data.image_sizes == (max(config.data.image_sizes),)
  assert pretrain.data.max_words == config.data.max_words


def test_missing_stream_says_how_to_pretrain_it(tmp_path):
  config = tiny_configs.load_config('mirrorgan', 'cub')
  config.damsm.workdir = str(tmp_path)     # the DAMSM part is not under test
  with pytest.raises(errors.ConfigError, match='configs/stream.py:cub'):
    mirrorgan_trainer.MirrorGan.prepare_run(config, str(tmp_path))
  config.stream.workdir = str(tmp_path / 'nowhere')
  with pytest.raises(errors.ConfigError, match='configs/stream.py:cub'):
    mirrorgan_trainer.MirrorGan.prepare_run(config, str(tmp_path))
