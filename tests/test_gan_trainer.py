"""The shared GAN trainer runs AttnGAN and DM-GAN end to end on tiny shapes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax import errors
from t2ijax.trainers import gan
from t2ijax.trainers import loop
from tests import tiny_configs


def test_kl_matches_closed_form():
  mu = jnp.array([[0.3, -1.0], [2.0, 0.1]])
  logvar = jnp.array([[0.2, -0.5], [1.0, 0.0]])
  var = np.exp(np.asarray(logvar))
  # KL(N(mu, var) || N(0, 1)) per element, averaged as the official code does.
  expected = np.mean(0.5 * (var + np.asarray(mu) ** 2 - 1.0 - np.asarray(logvar)))
  np.testing.assert_allclose(gan.kl_loss(mu, logvar), expected, rtol=1e-6)



@pytest.mark.parametrize("method", ["dmgan", "attngan"])
def test_gan_trains_samples_and_resumes(method, damsm_dir, data_dir, tmp_path):
  config = tiny_configs.gan(method, data_dir, damsm_dir)
  workdir = str(tmp_path)
  result = loop.train_and_evaluate(config, workdir, jax.devices()[:1])
  for key in ("D0_loss", "D1_loss", "G_loss", "damsm_words", "kl"):
    assert np.isfinite(result[key]), key
  assert 0.0 <= result["eval/damsm_image_to_text_top1"] <= 1.0
  assert os.path.exists(os.path.join(workdir, "samples", "step_0000003.png"))
  setup, state, step = loop.restore_state(config, workdir, jax.devices()[:1])
  assert step == 3
  g = state.nets["G"]
  # EMA trails the parameters; the frozen text encoder is the DAMSM's.
  assert any(not np.allclose(a, b) for a, b in
             zip(jax.tree.leaves(g.params), jax.tree.leaves(g.ema_params)))
  np.testing.assert_array_equal(
      jax.tree.leaves(state.nets["text_encoder"].params)[0],
      jax.tree.leaves(setup.method.damsm.text_variables["params"])[0])
  # --mode=sample: captions -> a grid with one row per (caption, noise draw).
  from t2ijax.trainers import sampling
  config.sample.captions = "a small red circle on the left|a large blue square at the top"
  config.sample.num_noise = 2
  config.sample.interpolate_steps = 3
  out = sampling.sample_command(config, workdir)
  assert os.path.exists(out["grid"]) and os.path.exists(out["interpolation"])


def test_gan_without_damsm_says_how_to_get_one(data_dir, tmp_path):
  config = tiny_configs.gan("dmgan", data_dir, "")
  config.damsm.pretrain = {}
  with pytest.raises(errors.ConfigError, match="configs/damsm.py"):
    loop.Setup(config, str(tmp_path), jax.devices()[:1])
