r"""Command line: train, evaluate or sample any method from its config file.

  python -m t2ijax.main --config=configs/damsm.py:demo --workdir=runs/damsm_demo
  python -m t2ijax.main --config=configs/damsm.py:demo --workdir=runs/damsm_demo --mode=eval
  python -m t2ijax.main --config=configs/damsm.py:cub --workdir=runs/damsm_cub \
      --config.data.manual_dir=DATA/birds --config.train.batch_size=96

Rerunning a command with the same --workdir resumes from its latest checkpoint.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from t2ijax import errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "A configs/<method>.py[:variant] file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs, samples and config.json go here.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to do.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str):
  """The single library call behind the command line."""
  from t2ijax.trainers import loop
  if mode == "train":
    return loop.train_and_evaluate(config, workdir)
  if mode == "eval":
    return loop.evaluate(config, workdir)
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
    result = run(FLAGS.config, os.path.expanduser(FLAGS.workdir), FLAGS.mode)
  except errors.T2IError as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error ({type(e).__name__}): {e}", file=sys.stderr)
    sys.exit(2)
  if result:
    print({k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()})


if __name__ == "__main__":
  app.run(main)
