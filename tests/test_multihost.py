"""Two processes joined by jax.distributed (4 CPU devices each) train DM-GAN over
one 8-device mesh exactly as one process with 8 devices does; their checkpoint
restores in one process. The processes are started by launch/local_multiprocess.sh.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from t2ijax import distributed
from t2ijax import errors
from t2ijax import parallel
from t2ijax.trainers import loop
from tests import tiny_configs

ROOT = tiny_configs.ROOT
NUM_STEPS = 2
# tiny_configs.gan's overrides, as flags for the processes and a dict for this one.
GAN_FLAGS = {
    'data.shapes.num_train': 32, 'data.shapes.num_test': 16,
    'data.captions_per_image': 3, 'data.max_words': 8, 'data.num_parallel_calls': 2,
    'model.ngf': 4, 'model.ndf': 4, 'train.batch_size': 8, 'train.num_steps': NUM_STEPS,
    'checkpoint.every_steps': NUM_STEPS, 'checkpoint.use_async': False,
    'log.every_steps': 1, 'log.sample_every_steps': NUM_STEPS, 'log.num_samples': 2,
    'eval.batch_size': 8, 'eval.num_batches': 1, 'eval.shapes_classifier': False,
    'mesh.shape': (-1, 1),
}


def _config(data_dir, damsm_dir):
  config = tiny_configs.apply(tiny_configs.load_config('dmgan', 'demo'), GAN_FLAGS)
  config.data.data_dir = data_dir
  config.damsm.workdir = damsm_dir
  return config



def _launch(workdir, data_dir, damsm_dir, log_dir):
  flags = ['--config=configs/dmgan.py:demo', f'--workdir={workdir}',
           f'--config.data.data_dir={data_dir}', f'--config.damsm.workdir={damsm_dir}',
           *tiny_configs.as_flags(GAN_FLAGS)]
  env = dict(os.environ, NUM_PROCESSES='2', DEVICES_PER_PROCESS='4', PYTHON=sys.executable,
             LOG_DIR=str(log_dir), TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.Popen(['bash', os.path.join(ROOT, 'launch', 'local_multiprocess.sh'),
                           *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _steps(setup):
  """NUM_STEPS steps in this process over its 8 devices: the reference."""
  # Initialised on one device and then replicated: the same values (init does
  # not depend on the layout) for an eighth of the CPU time of an 8-way init.
  state = jax.jit(setup.method.init_state)(setup.rng)
  state = jax.device_put(setup.method.load_pretrained(state), setup.state_shardings)
  initial = jax.device_get(state)
  step = setup.jit_train_step()
  with jax.set_mesh(setup.mesh):
    for local in setup.train_batches(0, NUM_STEPS):
      state, metrics = step(state, parallel.global_batch(local, setup.mesh))
  return initial, jax.device_get(state), jax.device_get(metrics)


def test_two_processes_train_like_one_and_their_checkpoint_restores(
    damsm_dir, data_dir, tmp_path):
  # Set up first: it prepares the data set the processes then only read.
  setup = loop.Setup(_config(data_dir, damsm_dir), str(tmp_path / 'one_process'), jax.devices())
  workdir = str(tmp_path / 'two_processes')
  proc = _launch(workdir, data_dir, damsm_dir, tmp_path / 'logs')
  try:
    initial, single, single_metrics = _steps(setup)
    output, _ = proc.communicate(timeout=900)
  finally:
    if proc.poll() is None:
      proc.kill()
  log1 = (tmp_path / 'logs' / 'process_1.log').read_text()
  assert proc.returncode == 0, output[-4000:] + '\n---- process 1 ----\n' + log1[-3000:]
  assert 'process 0 of 2, 4 local / 8 global devices' in output

  # Only process 0 wrote metrics, the config, the eval summary and the sample grid.
  assert os.path.exists(os.path.join(workdir, 'samples', f'step_{NUM_STEPS:07d}.png'))
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['step'] for r in rows if 'train/G_loss' in r] == list(range(1, NUM_STEPS + 1))
  assert os.path.exists(os.path.join(workdir, f'eval_step{NUM_STEPS}.json'))
  assert not [f for f in os.listdir(workdir) if f.endswith('.tmp')]
  # The last logged losses are those of the one-process run.
  last = [r for r in rows if r['step'] == NUM_STEPS and 'train/G_loss' in r][0]
  np.testing.assert_allclose(last['train/G_loss'], single_metrics['G_loss'], rtol=1e-4)

  # The checkpoint the two processes wrote together restores here, in one
  # process, and holds the one-process run's parameters.
  _, restored, step = loop.restore_state(_config(data_dir, damsm_dir), workdir, jax.devices())
  assert step == NUM_STEPS
  restored = jax.device_get(restored)
  assert int(restored.step) == NUM_STEPS
  flat_single = jax.tree_util.tree_leaves_with_path(single)
  flat_restored = jax.tree.leaves(restored)
  assert len(flat_single) == len(flat_restored) > 50
  lr = setup.config.optim.g_lr
  loose = total = 0
  for (path, a), b in zip(flat_single, flat_restored):
    name = jax.tree_util.keystr(path)
    if 'opt_state' in name:
      # Adam's moments are gradients: see _assert_close; a percent of the scale.
      scale = float(np.abs(a).max()) if np.size(a) else 0.0
      np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-2 * scale, err_msg=name)
      continue
    loose += _assert_close(np.asarray(a), np.asarray(b), name, lr)
    total += np.size(a)
  assert loose <= 1e-3 * total, f'{loose} of {total} elements differ by more than 1e-5'
  # The steps really moved G (so the equality is not vacuous).
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(initial.nets['G'].params),
                                                 jax.tree.leaves(single.nets['G'].params))]
  assert np.mean(moved) > 0.9


def _assert_close(a, b, name, lr) -> int:
  """Equal to float tolerance; returns how many elements are not equal to 1e-5.

  The all-reduce across processes (gloo) sums in another order than the one
  inside a process. Adam divides each update by the gradient's RMS, so where a
  gradient is mostly rounding (a bias before a BatchNorm, an attention key's
  bias) the two runs can step differently, by up to 2 lr per step (an Adam
  step moves a parameter by about lr at most; a rounding-level gradient may
  flip its sign), and parameters that depend on those steps (the next D
  gradients) drift by a little too. So each element may differ by that bound,
  while all but 0.1% of them must agree to 1e-5. A wrong layout (rows on the
  wrong process, a missing all-reduce) moves nearly every element by about lr.
  """
  if a.dtype.kind not in 'fc':
    np.testing.assert_array_equal(b, a, err_msg=name)
    return 0
  scale = float(np.abs(a).max()) if a.size else 0.0
  np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale + 2 * lr * NUM_STEPS,
                             err_msg=name)
  return int(np.sum(np.abs(b - a) > 1e-5 * np.abs(a) + 1e-7 * scale + 1e-9))


def test_sigterm_to_one_process_stops_all_at_one_step(tmp_path, data_dir):
  """A preemption notice (SIGTERM) reaching any one process makes every process
  save a checkpoint at the same step and stop cleanly (jax's preemption sync)."""
  import re
  import signal
  import socket
  import time
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path / 'run')
  flags = dict(tiny_configs.DAMSM_FLAGS, **{
      'train.num_steps': 1000, 'checkpoint.every_steps': 1000, 'log.every_steps': 5,
      'eval.num_batches': 1, 'mesh.shape': (-1, 1)})
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  procs = []
  for i in range(2):
    command = [sys.executable, '-m', 't2ijax.main', '--config=configs/damsm.py:demo',
               f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
               f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
               f'--process_id={i}', '--num_cpu_devices=1', *tiny_configs.as_flags(flags)]
    procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True))
  try:
    metrics = os.path.join(workdir, 'metrics.jsonl')
    deadline = time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in procs):
      if os.path.exists(metrics) and any(
          json.loads(line)['step'] >= 10 for line in open(metrics)):
        break
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)       # not the coordinator
    errs = [p.communicate(timeout=600)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
  stopped = [re.findall(r'stopped at step (\d+) after SIGTERM', e) for e in errs]
  assert stopped[0] and stopped[0] == stopped[1], stopped
  step = int(stopped[0][0])
  assert 10 <= step < 1000
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
                if s.isdigit()) == [step]


@pytest.mark.parametrize('options, environ, expected', [
    (distributed.Options(), {}, False),
    (distributed.Options(coordinator_address='h:1', num_processes=2, process_id=1), {}, True),
    (distributed.Options(), {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '16'}, True),
    (distributed.Options(), {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, False),
    (distributed.Options(), {'OMPI_COMM_WORLD_SIZE': '4'}, True),
    (distributed.Options(), {'T2IJAX_DISTRIBUTED': '1'}, True),
    (distributed.Options(), {'JAX_COORDINATOR_ADDRESS': 'h:1'}, True),
    (distributed.Options(mode='off'), {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '16'}, False),
    (distributed.Options(mode='on'), {}, True),
])
def test_when_to_initialize(options, environ, expected):
  assert distributed.decide(options, environ)[0] == expected


def test_partial_coordinator_flags_are_refused():
  with pytest.raises(errors.ConfigError, match='go together'):
    distributed.initialize(distributed.Options(coordinator_address='h:1'))
  with pytest.raises(errors.ConfigError, match='must be in'):
    distributed.initialize(distributed.Options(
        coordinator_address='h:1', num_processes=2, process_id=2))
