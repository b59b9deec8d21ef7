"""Orbax checkpoints: the train state, the data position and the config, together.

Saves go to `<workdir>/checkpoints/<step>/{state,data,config}`; Orbax writes into a
temporary folder and renames it when complete, so a kill mid-save never damages the
previous checkpoint. Restores always go into an abstract target (shapes, dtypes and
shardings), so a checkpoint from another model fails with a clear message rather
than loading silently.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from t2ijax import errors

ITEMS = ("state", "data", "config")


def checkpoint_dir(workdir: str) -> str:
  if "://" in workdir:   # e.g. gs://bucket/run: shared storage Orbax writes to directly
    return workdir.rstrip("/") + "/checkpoints"
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
  """Keep-N, optionally asynchronous saves; resume from the latest step."""

  def __init__(self, workdir: str, keep: int = 3, use_async: bool = True):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=use_async)
    self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS,
                                         options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_position: dict, config) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_position),
        config=ocp.args.JsonSave(json.loads(config.to_json()))))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict, dict]:
    """Returns (state, data_position, saved_config_dict) of `step` (default: latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise errors.CheckpointError(
          f"no checkpoint in {self.directory}; train first (--mode=train) or "
          "point --workdir at a finished run")
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=ocp.args.JsonRestore(),
          config=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise errors.CheckpointError(
          f"the checkpoint at step {step} in {self.directory} does not match the "
          f"model built from this config ({type(e).__name__}: {str(e)[:400]}). Use the "
          "config the run was trained with (it is saved as config.json in the "
          "workdir), or start a new --workdir") from e
    return restored.state, dict(restored.data), dict(restored.config)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def read_run_config(workdir: str, missing_message: str) -> ml_collections.ConfigDict:
  """The config.json of a finished run, or a CheckpointError with `missing_message`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise errors.CheckpointError(missing_message)
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def check_run_vocab(workdir: str, vocab, what: str, flag: str, source: str) -> None:
  """Raises unless the run in `workdir` used `vocab` (no-op without either).

  Its word ids would index another vocabulary's words. `what` names the run
  ('the DAMSM'), `flag` the config field that points at it, `source` its data.
  """
  from t2ijax.data import text  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "vocab.json")
  if vocab is None or not os.path.exists(path):
    return
  with open(path) as f:
    run_vocab = text.Vocab.from_json(f.read())
  if run_vocab.fingerprint() != vocab.fingerprint():
    raise errors.CheckpointError(
        f"{what} in {workdir} was trained with another vocabulary ({len(run_vocab)} "
        f"words) than this data set's ({len(vocab)} words): pretrain it on the same "
        f"data source ({source!r} there) and captions, or point --config.{flag} at a "
        "matching run")


def restore_on_one_device(workdir: str, init_state,
                          missing_message: str | None = None) -> tuple[Any, dict]:
  """The latest checkpoint of a finished run, laid out as `init_state` makes it.

  For reading another run's networks (a frozen DAMSM, STREAM, Stage-I G, ...):
  restored onto this process's first device whatever mesh it was saved from,
  so the caller fetches only the nets it needs.

  Args:
    workdir: the run's directory.
    init_state: rng -> the method's TrainState (only its shapes are used).
    missing_message: the CheckpointError text when the run has no checkpoint
      yet (default: the Checkpointer's).

  Returns:
    (state, data position).
  """
  abstract = jax.eval_shape(init_state, jax.random.key(0))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  checkpointer = Checkpointer(workdir, use_async=False)
  try:
    if missing_message and checkpointer.latest_step() is None:
      raise errors.CheckpointError(missing_message)
    state, position, _ = checkpointer.restore(abstract)
  finally:
    checkpointer.close()
  return state, position


def abstract_like(tree, shardings) -> Any:
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def config_differences(saved: dict, current: ml_collections.ConfigDict) -> list[str]:
  """Dotted keys whose values differ between a saved config and the current one."""
  now = json.loads(current.to_json())
  diffs = []

  def walk(a, b, prefix):
    for k in sorted(set(a) | set(b)):
      key = f"{prefix}{k}"
      va, vb = a.get(k), b.get(k)
      if isinstance(va, dict) and isinstance(vb, dict):
        walk(va, vb, key + ".")
      elif va != vb:
        diffs.append(f"{key}: {va!r} -> {vb!r}")
  walk(saved, now, "")
  if diffs:
    logging.info("config differs from the checkpoint's: %s", diffs)
  return diffs
