"""Killing a run and rerunning the same command reaches the same parameters, bit
for bit, as the uninterrupted run (SIGKILL: from the last checkpoint; SIGTERM: the
run saves at the next step boundary and stops)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import tiny_configs

ROOT = tiny_configs.ROOT
NUM_STEPS = 40


def _command(workdir, data_dir):
  flags = dict(tiny_configs.DAMSM_FLAGS, **{
      "train.num_steps": NUM_STEPS, "checkpoint.every_steps": 4, "log.every_steps": 4})
  return [sys.executable, "-m", "t2ijax.main", "--config=configs/damsm.py:demo",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          *tiny_configs.as_flags(flags)]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""          # t2ijax adds its own; no fake devices here
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  return env


def _run(workdir, data_dir):
  proc = subprocess.run(_command(workdir, data_dir), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _state(workdir, step):
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))


def _assert_bit_equal(a, b):
  import jax
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 10
  for (path, x), y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  _run(workdir, data_dir)
  assert _steps(workdir)[-1] == NUM_STEPS
  return workdir


def _interrupt(workdir, data_dir, sig):
  """Starts the run, sends `sig` once a mid-run checkpoint exists, returns exit code."""
  proc = subprocess.Popen(_command(workdir, data_dir), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if any(4 <= s < NUM_STEPS - 8 for s in _steps(workdir)):
      proc.send_signal(sig)
      break
    time.sleep(0.02)
  _, err = proc.communicate(timeout=300)
  return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_run_resumes_bit_exactly(uninterrupted, tmp_path, data_dir, sig):
  workdir = str(tmp_path)
  code, err = _interrupt(workdir, data_dir, sig)
  stopped_at = _steps(workdir)[-1]
  assert stopped_at < NUM_STEPS, "the run finished before it could be interrupted"
  if sig == signal.SIGKILL:
    assert code == -signal.SIGKILL
  else:  # a clean stop after saving at the step the signal arrived
    assert code == 0, err[-2000:]
    assert "rerun the same command to resume" in err
  _run(workdir, data_dir)      # the same command again
  assert _steps(workdir)[-1] == NUM_STEPS
  _assert_bit_equal(_state(uninterrupted, NUM_STEPS), _state(workdir, NUM_STEPS))
  # And the run really learned something between the interruption and the end.
  with pytest.raises(AssertionError):
    _assert_bit_equal(_state(uninterrupted, NUM_STEPS), _state(uninterrupted, _steps(uninterrupted)[0]))
