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
