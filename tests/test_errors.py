"""Bad input gets one clear error that names the problem and the fix, and never
costs a checkpoint."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from t2ijax import errors
from t2ijax import registry
from t2ijax.trainers import damsm as damsm_trainer
from t2ijax.trainers import loop
from tests import tiny_configs


def _main(*args):
  env = dict(os.environ, XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "t2ijax.main", *args], cwd=tiny_configs.ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def test_unknown_config_key_is_rejected(tmp_path):
  proc = _main("--config=configs/damsm.py:demo", f"--workdir={tmp_path}",
               "--config.train.bacth_size=8")
  assert proc.returncode != 0
  assert "bacth_size" in proc.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_unknown_variant_is_rejected(tmp_path):
  proc = _main("--config=configs/damsm.py:cubb", f"--workdir={tmp_path}")
  assert proc.returncode != 0
  assert "cubb" in proc.stderr and "'coco', 'cub', 'demo'" in proc.stderr


def test_missing_cub_data_says_how_to_prepare(tmp_path):
  proc = _main("--config=configs/damsm.py:cub", f"--workdir={tmp_path / 'w'}",
               f"--config.data.data_dir={tmp_path / 'data'}")
  assert proc.returncode == 2
  assert "DataLayoutError" in proc.stderr
  assert "CUB_200_2011" in proc.stderr and "manual_dir" in proc.stderr
  assert "python -m t2ijax.data.prepare" in proc.stderr


def test_config_is_written_resolved(tiny_damsm, tmp_path):
  tiny_damsm.train.num_steps = 2
  loop.train_and_evaluate(tiny_damsm, str(tmp_path), jax.devices()[:1])
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["model"]["n_words"] > 10          # resolved from the vocabulary
  assert saved["train"]["num_steps"] == 2
  assert os.path.exists(tmp_path / "metrics.jsonl")
  assert os.path.exists(tmp_path / "eval_step2.json")


def test_mismatched_checkpoint_is_a_clear_error(tiny_damsm, tmp_path):
  tiny_damsm.train.num_steps = 2
  loop.train_and_evaluate(tiny_damsm, str(tmp_path), jax.devices()[:1])
  tiny_damsm.model.nef = 32
  setup = loop.Setup(tiny_damsm, str(tmp_path), jax.devices()[:1])
  with pytest.raises(errors.CheckpointError, match="does not match the model"):
    setup.init_or_restore()
  assert setup.checkpointer.latest_step() == 2   # untouched


class _NanParams(damsm_trainer.DamsmMethod):
  """Parameters turn NaN from the 4th step on (a diverging run)."""

  def train_step(self, state, batch):
    new, metrics = super().train_step(state, batch)
    poison = lambda x: jnp.where(state.step >= 3, jnp.nan, x)
    text = new.nets["text"].replace(params=jax.tree.map(poison, new.nets["text"].params))
    return new.replace(nets={**new.nets, "text": text}), metrics


class _NanLoss(damsm_trainer.DamsmMethod):
  """The loss turns NaN from the 3rd step on."""

  def train_step(self, state, batch):
    new, metrics = super().train_step(state, batch)
    metrics["loss"] = jnp.where(state.step >= 2, jnp.nan, metrics["loss"])
    return new, metrics


@pytest.mark.parametrize("method", ["_NanParams", "_NanLoss"])
def test_non_finite_stops_and_keeps_last_good_checkpoint(tiny_damsm, tmp_path, monkeypatch,
                                                         method):
  monkeypatch.setitem(registry.METHODS, "nan_probe", f"tests.test_errors:{method}")
  tiny_damsm.method = "nan_probe"
  tiny_damsm.train.num_steps = 6
  with pytest.raises(errors.NonFiniteError) as info:
    loop.train_and_evaluate(tiny_damsm, str(tmp_path), jax.devices()[:1])
  message = str(info.value)
  assert "last good checkpoint is step 2" in message
  assert "rerun" in message
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert steps == [2]
