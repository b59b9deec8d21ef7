r"""Command line: train, evaluate or sample any method from its config file.

  python -m t2ijax.main --config=configs/damsm.py:demo --workdir=runs/damsm_demo
  python -m t2ijax.main --config=configs/damsm.py:demo --workdir=runs/damsm_demo --mode=eval
  python -m t2ijax.main --config=configs/damsm.py:cub --workdir=runs/damsm_cub \
      --config.data.manual_dir=DATA/birds --config.train.batch_size=96

Rerunning a command with the same --workdir resumes from its latest checkpoint.

Several processes (t2ijax/distributed.py; launch/ has the scripts):
  launch/local_multiprocess.sh --config=configs/dmgan.py:demo --workdir=runs/mp
  python -m t2ijax.main ... --coordinator_address=HOST0:12345 --num_processes=2 \
      --process_id=0           # and --process_id=1 on the second host

Compile the train step for a mesh without training, reporting FLOPs and memory
per device (on CPU, --num_cpu_devices fakes a mesh larger than the machine):
  python -m t2ijax.main --mode=compile --config=configs/dmgan.py:demo \
      --workdir=runs/compile --num_cpu_devices=8 --config.mesh.shape='(4,2)' \
      --config.sharding.strategy=fsdp
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from t2ijax import distributed
from t2ijax import errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "A configs/<method>.py[:variant] file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs, samples and config.json go here.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "compile"],
                  "What to do; compile: lower and compile the train step, report "
                  "FLOPs and memory per device, train nothing.")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Call jax.distributed.initialize: auto = when flags or the "
                  "environment (SLURM, Open MPI, T2IJAX_DISTRIBUTED=1, "
                  "JAX_COORDINATOR_ADDRESS) say there are several processes.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0.")
flags.DEFINE_integer("num_processes", -1, "Processes in the run (-1: from the environment).")
flags.DEFINE_integer("process_id", -1, "This process's index (-1: from the environment).")
flags.DEFINE_string("local_device_ids", "",
                    "Comma-separated local accelerators this process uses ('': all, or "
                    "one per process under SLURM).")
flags.DEFINE_integer("num_cpu_devices", -1,
                     "CPU only: this many fake devices per process (tests, local "
                     "multi-process runs, compile checks).")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str):
  """The single library call behind the command line."""
  from t2ijax.convert import workdir as converted
  from t2ijax.trainers import loop
  # A workdir written by `python -m t2ijax.convert` says what its weights need.
  converted.apply_settings(config, workdir, mode)
  if mode == "train":
    return loop.train_and_evaluate(config, workdir)
  if mode == "eval":
    return loop.evaluate(config, workdir)
  if mode == "compile":
    return loop.compile_train_step(config, workdir)
  if mode == "sample":
    from t2ijax import registry
    sampler = getattr(registry.method_class(config.method), "sample_command", None)
    if sampler is None:
      raise errors.ConfigError(f"method {config.method!r} has no --mode=sample")
    return sampler(config, workdir)
  raise errors.ConfigError(f"unknown --mode={mode!r}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  try:
    distributed.initialize(distributed.Options(
        mode=FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
        local_device_ids=FLAGS.local_device_ids, num_cpu_devices=FLAGS.num_cpu_devices))
    if not distributed.is_main_process():
      # Only process 0 logs progress; the others report warnings and errors.
      logging.set_verbosity(logging.WARNING)
    result = run(FLAGS.config, os.path.expanduser(FLAGS.workdir), FLAGS.mode)
  except errors.T2IError as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error ({type(e).__name__}): {e}", file=sys.stderr)
    sys.exit(2)
  if result and distributed.is_main_process():
    print({k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()})


if __name__ == "__main__":
  app.run(main)
