"""--mode=sample for the text-to-image GANs: captions -> a PNG grid.

Rows are (caption, noise draw) pairs; columns the generator's stages, each shown
at the largest size. With sample.interpolate_steps > 0 a second grid walks the
text features from the first caption to the second at fixed noise (GAN-INT's
interpolation, on both the sentence and the word features).
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from t2ijax import errors
from t2ijax import images as images_lib


def read_captions(sample_config) -> list[str]:
  if sample_config.captions_file:
    if not os.path.exists(sample_config.captions_file):
      raise errors.ConfigError(f"sample.captions_file {sample_config.captions_file} does not exist")
    with open(sample_config.captions_file) as f:
      captions = [line.strip() for line in f if line.strip()]
  else:
    captions = [c.strip() for c in sample_config.captions.split("|") if c.strip()]
  if not captions:
    raise errors.CaptionError(
        "no captions to sample from: pass --config.sample.captions='a red circle|a blue "
        "square' or --config.sample.captions_file=FILE (one caption per line)")
  return captions


def encode_captions(captions, vocab, max_words: int, unknown: str):
  """(ids (N, max_words), lengths (N,)); longer captions keep their first words."""
  ids = np.zeros((len(captions), max_words), np.int32)
  lengths = np.zeros((len(captions),), np.int32)
  for i, caption in enumerate(captions):
    encoded = vocab.encode(caption, unknown=unknown)[:max_words]
    ids[i, :len(encoded)] = encoded
    lengths[i] = len(encoded)
  return ids, lengths


def batch_order(lengths: np.ndarray, official_mask_bug: bool) -> np.ndarray:
  """The row order to generate in: longest caption first under the mask bug.

  Official batches are sorted by caption length, longest first, and with the
  attention padding-mask bug an image's mask depends on the batch order
  (t2ijax/nn/attention.py), so converted official weights are run in that
  order (stable among equal lengths). Otherwise the given order.
  """
  if not official_mask_bug:
    return np.arange(len(lengths))
  return np.argsort(-np.asarray(lengths), kind="stable")


def _generate(method, state, words, sentence, mask, z, key):
  g = state.nets["G"]
  out, _ = method.generate(g, g.ema_params, z, sentence, words, mask, key, train=False)
  return out["images"]


def sample_command(config, workdir: str) -> dict:
  from t2ijax.trainers import gan, loop
  setup, state, step = loop.restore_state(config, workdir)
  method, s = setup.method, config.sample
  captions = read_captions(s)
  ids, lengths = encode_captions(captions, setup.prepared.vocab, config.data.max_words,
                                 config.data.unknown_words)
  words, sentence, mask = jax.jit(method.encode_text)(state, jnp.asarray(ids), jnp.asarray(lengths))
  n, k = len(captions), s.num_noise
  key = jax.random.key(s.seed)
  z = method.sample_noise(key, (n * k, config.model.z_dim))
  order = batch_order(np.repeat(lengths, k), config.model.get("official_mask_bug", False))
  rep = lambda x: jnp.repeat(x, k, axis=0)[order]
  generate = jax.jit(lambda st, w, se, m, zz, kk: _generate(method, st, w, se, m, zz, kk))
  stages = generate(state, rep(words), rep(sentence), rep(mask), z[order],
                    jax.random.fold_in(key, 1))
  unsort = np.argsort(order)
  stages = [x[unsort] for x in stages]
  picture = gan.stage_grid(None, [np.asarray(x) for x in stages])
  stamp = time.strftime("%Y%m%d_%H%M%S")
  out_dir = os.path.join(workdir, "samples")
  path = images_lib.save_png(os.path.join(out_dir, f"sample_step{step}_{stamp}.png"), picture)
  with open(os.path.join(out_dir, f"sample_step{step}_{stamp}.txt"), "w") as f:
    f.write(f"rows: {k} noise draws per caption, columns: stages {method.sizes}\n")
    f.write("\n".join(captions) + "\n")
  result = {"grid": path, "step": step}
  if s.interpolate_steps > 0 and n >= 2:
    alphas = jnp.linspace(0.0, 1.0, s.interpolate_steps)[:, None]
    mix = lambda a, b: (1 - alphas[..., None]) * a + alphas[..., None] * b
    w = mix(words[0], words[1])
    se = (1 - alphas) * sentence[0] + alphas * sentence[1]
    m = jnp.broadcast_to(mask[0] | mask[1], (s.interpolate_steps, mask.shape[1]))
    zz = jnp.broadcast_to(z[0], (s.interpolate_steps, z.shape[1]))
    last = generate(state, w, se, m, zz, jax.random.fold_in(key, 2))[-1]
    row = images_lib.grid(images_lib.to_uint8(np.asarray(last)), ncols=s.interpolate_steps)
    result["interpolation"] = images_lib.save_png(
        os.path.join(out_dir, f"interpolate_step{step}_{stamp}.png"), row)
  logging.info("samples written: %s", result)
  return result
