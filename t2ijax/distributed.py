"""Multi-process start-up: `jax.distributed.initialize` when a run has several
processes, before anything touches a jax backend.

A run is multi-process when any of these holds (`decide` below):
  * explicit coordinator flags: --coordinator_address, --num_processes > 1,
    --process_id (launch/local_multiprocess.sh; any cluster without a scheduler);
  * JAX_COORDINATOR_ADDRESS is set (jax's own variable);
  * T2IJAX_DISTRIBUTED=1 (launch/tpu_pod.sh sets it on every TPU VM worker; jax
    then finds the coordinator through the TPU metadata);
  * SLURM with more than one task (launch/slurm_gpu.sbatch), or Open MPI with
    more than one rank: jax reads the coordinator, process count and index from
    the scheduler's variables.
`--distributed=on|off` overrides the detection.

Each process then reads its own rows of every global batch (data/pipeline.py),
all processes write the same checkpoint to shared storage (Orbax coordinates),
and only process 0 writes metrics, config files and images.
"""

import dataclasses
import os
from typing import Mapping

from absl import logging

from t2ijax import errors


@dataclasses.dataclass(frozen=True)
class Options:
  """What the command line says about processes and devices."""
  mode: str = 'auto'                     # auto | on | off
  coordinator_address: str = ''          # host:port of process 0
  num_processes: int = -1                # -1: from the environment
  process_id: int = -1                   # -1: from the environment
  local_device_ids: str = ''             # e.g. '0,1,2,3'; '': jax's default
  num_cpu_devices: int = -1              # CPU only: fake devices per process
  timeout_s: int = 300


def _int_env(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ.get(name, '0'))
  except ValueError:
    return 0


def decide(options: Options, environ: Mapping[str, str] | None = None) -> tuple[bool, str]:
  """(whether to call jax.distributed.initialize, the reason), from flags and env."""
  environ = os.environ if environ is None else environ
  if options.mode not in ('auto', 'on', 'off'):
    raise errors.ConfigError(f"--distributed={options.mode!r} is not auto, on or off")
  if options.mode == 'off':
    return False, '--distributed=off'
  if options.mode == 'on':
    return True, '--distributed=on'
  if options.coordinator_address or options.num_processes > 1 or options.process_id >= 0:
    return True, 'coordinator flags'
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return True, 'JAX_COORDINATOR_ADDRESS'
  if environ.get('T2IJAX_DISTRIBUTED', '').lower() in ('1', 'true', 'yes'):
    return True, 'T2IJAX_DISTRIBUTED'
  if 'SLURM_JOB_ID' in environ and _int_env(environ, 'SLURM_NTASKS') > 1:
    return True, 'SLURM with several tasks'
  if _int_env(environ, 'OMPI_COMM_WORLD_SIZE') > 1:
    return True, 'Open MPI with several ranks'
  return False, 'one process'


def _check(options: Options) -> None:
  explicit = (options.coordinator_address, options.num_processes >= 0, options.process_id >= 0)
  if any(explicit) and not all(explicit):
    raise errors.ConfigError(
        '--coordinator_address, --num_processes and --process_id go together: give all '
        'three (e.g. --coordinator_address=HOST0:12345 --num_processes=2 --process_id=0), '
        'or none and let jax read them from SLURM / Open MPI / the TPU metadata')
  if options.num_processes == 0 or (
      options.num_processes > 0 and not 0 <= options.process_id < options.num_processes):
    raise errors.ConfigError(
        f'--process_id={options.process_id} must be in [0, --num_processes='
        f'{options.num_processes})')


def initialize(options: Options) -> bool:
  """Sets up devices and, for multi-process runs, jax.distributed. Returns whether
  jax.distributed was initialised. Call once, before any jax computation."""
  import jax
  _check(options)
  if options.num_cpu_devices > 0:
    # Fake CPU devices (tests, local multi-process runs, --mode=compile for a mesh
    # larger than this machine); must precede backend initialisation.
    jax.config.update('jax_num_cpu_devices', options.num_cpu_devices)
  use, reason = decide(options)
  if not use:
    return False
  kwargs = {'initialization_timeout': options.timeout_s}
  if options.coordinator_address:
    kwargs.update(coordinator_address=options.coordinator_address,
                  num_processes=options.num_processes, process_id=options.process_id)
  if options.local_device_ids:
    kwargs['local_device_ids'] = [int(x) for x in options.local_device_ids.split(',')]
  logging.info('jax.distributed.initialize (%s): %s', reason, kwargs)
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    raise errors.ConfigError(
        f'jax.distributed.initialize failed ({reason}): {e}. Pass --coordinator_address, '
        '--num_processes and --process_id explicitly, or --distributed=off for a '
        'single-process run') from e
  logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def is_main_process() -> bool:
  import jax
  return jax.process_index() == 0


_barriers = [0]


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process gets here, through the coordination service.

  Unlike `multihost_utils.sync_global_devices`, this runs no device collective:
  on CPU the first collective of a program opens a gloo context whose peers must
  all arrive within 30 s, which a process still preparing data or compiling
  (minutes, and unevenly across processes) would miss. Calling this after such
  work lets the collective start together.
  """
  import jax
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed   # as Orbax does
  _barriers[0] += 1
  client = jax_distributed.global_state.client
  if client is None:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(f't2ijax_{_barriers[0]}_{name}', timeout_in_ms=timeout_s * 1000)
