"""The training harness: mesh, data, sharded init, jitted steps, checkpoints, logs.

    train_and_evaluate(config, workdir)   # resumes from the latest checkpoint
    evaluate(config, workdir)             # the latest checkpoint on the eval split
    compile_train_step(config, workdir)   # AOT: FLOPs and memory per device, no training

Multi-process runs (t2ijax/distributed.py) go through the same code: every process
runs every line, loads its own rows of each batch, and writes the same checkpoint;
only process 0 writes config files, metrics, eval summaries and images.

One linear loop in banner sections, as the big_vision and Flax examples read.
"""

import json
import os
import signal
from typing import Any

import jax
import numpy as np
from absl import logging
from clu import periodic_actions

from t2ijax import checkpoint as ckpt_lib
from t2ijax import distributed
from t2ijax import errors
from t2ijax import parallel
from t2ijax import precision
from t2ijax import registry
from t2ijax import sharding_rules
from t2ijax import writers
from t2ijax.data import pipeline
from t2ijax.data import prepare as prepare_lib
from t2ijax.trainers import state as state_lib


class _Preemption:
  """Turns SIGTERM into 'save at the next step boundary, then stop'.

  With several processes, jax's preemption service (started by
  jax.distributed.initialize) catches SIGTERM on any process and agrees on one
  step at which all of them stop; a handler of our own would hide the signal
  from it, so none is installed then.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multi = jax.process_count() > 1

  def check(self, step: int) -> bool:
    if self._multi and not self.requested:
      from jax.experimental import multihost_utils
      try:
        self.requested = multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:   # the preemption service is turned off
        self._multi = False
    return self.requested

  def __enter__(self):
    if self._multi:
      return self

    def handler(signum, frame):
      del signum, frame
      logging.warning("SIGTERM: saving a checkpoint at the next step, then stopping")
      self.requested = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:   # not the main thread (e.g. inside some test runners)
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def open_data(config):
  """Prepares the data on process 0 first (others wait), then opens it everywhere."""
  if jax.process_index() == 0:
    prepared = prepare_lib.prepare(config.data)
  distributed.barrier("data_prepared")
  if jax.process_index() != 0:
    prepared = prepare_lib.prepare(config.data)   # a no-op on shared storage
  return prepared


def num_attributes(prepared, split: str) -> int:
  """Attribute labels per example (5 for shapes, 0 for captioned photos)."""
  return len(prepared.source(split)[0]["attributes"])


def resolve_config(config, prepared) -> None:
  """Fills data-dependent placeholders (vocabulary size) in place."""
  if "model" in config and "n_words" in config.model and config.model.n_words < 0:
    config.model.n_words = len(prepared.vocab)
  if config.train.num_steps < 0:
    per_epoch = max(len(prepared.class_ids[config.data.train_split]) // config.train.batch_size, 1)
    config.train.num_steps = config.train.num_epochs * per_epoch


def make_loader(config, prepared, split: str, shuffle: bool, seed_offset: int = 0):
  spec = pipeline.ExampleSpec.from_config(config.data, num_attributes(prepared, split))
  return pipeline.ExampleLoader(prepared.source(split), prepared.vocab,
                                prepared.class_ids[split], spec,
                                seed=config.seed + seed_offset, shuffle=shuffle)


def data_iterator(config, loader, batch_size: int, start_step: int, num_steps: int | None):
  return pipeline.batches(
      loader, batch_size, start_step, num_steps,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_parallel_calls=config.data.num_parallel_calls, prefetch=config.data.prefetch)


def write_config(config, workdir: str, vocab) -> None:
  """The resolved config and the vocabulary, beside the checkpoints (process 0)."""
  writers.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  writers.write_text(os.path.join(workdir, "vocab.json"), vocab.to_json())


def _check_precision(config, method_class) -> None:
  """config.precision.compute_dtype: a known dtype the method can compute in."""
  dtype = precision.config_dtype(config)
  if dtype not in ("float32", "bfloat16"):
    raise errors.ConfigError(
        f"precision.compute_dtype={dtype!r} is not 'float32' or 'bfloat16'")
  supported = getattr(method_class, "compute_dtypes", ("float32",))
  if dtype not in supported:
    raise errors.ConfigError(
        f"precision.compute_dtype={dtype!r} is not implemented for method "
        f"{config.method!r} (it computes in {', '.join(supported)}); "
        "use --config.precision.compute_dtype=float32")


class Setup:
  """Everything train and evaluate share: mesh, data, method, abstract state."""

  def __init__(self, config, workdir: str, devices=None):
    self.config, self.workdir = config, workdir
    method_class = registry.method_class(config.method)
    self.mesh = parallel.make_mesh(config.mesh, devices)
    parallel.check_batch_size(config.train.batch_size, self.mesh)
    parallel.check_process_rows(config.train.batch_size, self.mesh)
    _check_precision(config, method_class)
    self.prepared = open_data(config)
    if hasattr(method_class, "prepare_run"):   # e.g. a GAN's DAMSM dependency
      method_class.prepare_run(config, workdir)
    resolve_config(config, self.prepared)
    self.method = method_class(
        config, self.prepared.vocab, len(self.prepared.class_ids[config.data.train_split]))
    self.rng = jax.random.key(config.seed)
    self.abstract_state = jax.eval_shape(self.method.init_state, self.rng)
    self.sharding_plan = sharding_rules.plan(self.abstract_state, self.mesh,
                                             config.get("sharding"))
    self.state_shardings = self.sharding_plan.shardings
    if jax.process_index() == 0:
      logging.info("%s", self.sharding_plan.summary())
    self.checkpointer = ckpt_lib.Checkpointer(
        workdir, keep=config.checkpoint.keep, use_async=config.checkpoint.use_async)

  def jit_train_step(self):
    return jax.jit(
        self.method.train_step,
        in_shardings=(self.state_shardings, parallel.batch_sharding(self.mesh)),
        out_shardings=(self.state_shardings, parallel.replicated(self.mesh)),
        donate_argnums=(0,))

  def train_batches(self, start_step: int, num_steps: int):
    """This process's rows of the global train batches from start_step on."""
    cfg = self.config
    loader = make_loader(cfg, self.prepared, cfg.data.train_split, shuffle=True)
    return data_iterator(cfg, loader, cfg.train.batch_size, start_step, num_steps)

  def init_or_restore(self) -> tuple[state_lib.TrainState, int]:
    if self.checkpointer.latest_step() is None:
      init = jax.jit(self.method.init_state, out_shardings=self.state_shardings)
      return self.method.load_pretrained(init(self.rng)), 0
    abstract = ckpt_lib.abstract_like(self.abstract_state, self.state_shardings)
    state, position, saved = self.checkpointer.restore(abstract)
    ckpt_lib.config_differences(saved, self.config)
    logging.info("resumed from step %d in %s", position["next_step"], self.checkpointer.directory)
    return state, int(position["next_step"])


def compile_synchronised(jitted, *args, name: str):
  """jitted.lower(*args).compile(), then a barrier across processes.

  Processes finish compiling at different times (cache hits, loaded machines);
  the barrier lets the program's first collective start on all of them together.
  """
  compiled = jitted.lower(*args).compile()
  distributed.barrier(name)
  return compiled


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
  stacked = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in stacked])) for k in stacked[0]}


def _check_finite(metrics: dict[str, float], step: int, checkpointer) -> None:
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    raise errors.NonFiniteError(
        f"training diverged by step {step}: {bad}. Nothing was saved after this point; "
        f"the last good checkpoint is step {checkpointer.latest_step()} in "
        f"{checkpointer.directory}. Lower the learning rate (or check the data), "
        "then rerun the same command to resume from that checkpoint")


def _save(setup: Setup, state, step: int, finite_fn) -> None:
  if not bool(jax.device_get(finite_fn(state))):
    raise errors.NonFiniteError(
        f"the parameters at step {step} contain NaN/Inf, so they were not saved; the "
        f"last good checkpoint is step {setup.checkpointer.latest_step()} in "
        f"{setup.checkpointer.directory}. Lower the learning rate and rerun to resume")
  setup.checkpointer.save(step, state, {"next_step": step, "seed": setup.config.seed},
                          setup.config)


def _sample(setup: Setup, state, batch, step: int, writer) -> None:
  if jax.process_count() > 1:
    # sample_grid reads arrays back to the host: give every process all of them.
    state, batch = parallel.replicate((state, batch), setup.mesh)
  picture = setup.method.sample_grid(state, batch)
  if picture is None or jax.process_index() != 0:
    return
  path = writers.save_png(
      os.path.join(setup.workdir, "samples", f"step_{step:07d}.png"), picture)
  writer.write_images(step, {"samples": picture[None]})
  logging.info("sample grid: %s", path)


def run_eval(setup: Setup, state, step: int, writer) -> dict[str, float]:
  cfg = setup.config
  split = cfg.data.eval_split
  # A fixed seeded shuffle, so batches mix classes (CUB's files are sorted by class).
  loader = make_loader(cfg, setup.prepared, split, shuffle=True, seed_offset=1)
  batch_size = cfg.eval.batch_size
  num = loader.size // batch_size
  if cfg.eval.get("num_images", -1) > 0:
    # A number of images (30000 in the papers): several passes over the split,
    # each example with another random caption.
    num = -(-cfg.eval.num_images // batch_size)
  elif cfg.eval.num_batches > 0:
    num = min(num, cfg.eval.num_batches)
  if num == 0:
    raise errors.ConfigError(
        f"eval.batch_size={batch_size} exceeds the {loader.size} examples of split {split!r}")
  parallel.check_batch_size(batch_size, setup.mesh)
  # Several processes: outputs replicated, so each process can read them back.
  eval_fn = jax.jit(setup.method.eval_step,
                    in_shardings=(setup.state_shardings, parallel.batch_sharding(setup.mesh)),
                    out_shardings=(parallel.replicated(setup.mesh)
                                   if jax.process_count() > 1 else None))
  outputs = []
  setup.method.begin_eval()
  with jax.set_mesh(setup.mesh):
    for i, local in enumerate(data_iterator(cfg, loader, batch_size, 0, num)):
      batch = parallel.global_batch(local, setup.mesh)
      if i == 0:
        eval_fn = compile_synchronised(eval_fn, state, batch, name="eval_step")
      out = eval_fn(state, batch)
      outputs.append(setup.method.eval_output_on_host(jax.device_get(out)))
  metrics = {f"eval/{k}": v for k, v in setup.method.summarize_eval(outputs).items()}
  # Strings (e.g. why a metric was skipped) go to the JSON and the log only.
  writer.write_scalars(step, {k: v for k, v in metrics.items() if not isinstance(v, str)})
  writers.write_text(
      os.path.join(setup.workdir, f"eval_step{step}.json"),
      json.dumps({"step": step, "split": split, "num_examples": num * batch_size, **metrics},
                 indent=2))
  logging.info("eval at step %d: %s", step, metrics)
  return metrics


def train_and_evaluate(config, workdir: str, devices=None) -> dict[str, Any]:
  # ---- setup: mesh, data, method, state ----
  setup = Setup(config, workdir, devices)
  write_config(config, workdir, setup.prepared.vocab)
  writer = writers.create(workdir)
  state, start_step = setup.init_or_restore()
  num_steps = config.train.num_steps

  # ---- jitted functions, explicit shardings, donated state ----
  train_step = setup.jit_train_step()
  finite_fn = jax.jit(lambda s: state_lib.all_finite(s.nets),
                      out_shardings=parallel.replicated(setup.mesh))

  # ---- data: a pure function of the step, so resuming needs only the step ----
  batches = setup.train_batches(start_step, max(num_steps - start_step, 0))
  if jax.process_index() == 0 and start_step == 0:
    logging.info("parameters: %s", {k: int(sum(x.size for x in jax.tree.leaves(v.params)))
                                    for k, v in setup.abstract_state.nets.items()})

  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=config.log.every_steps)
  history, metrics, step = [], {}, start_step
  sample_batch = None
  # ---- the loop ----
  with _Preemption() as preemption, jax.set_mesh(setup.mesh):
    for step in range(start_step + 1, num_steps + 1):
      local = next(batches)
      batch = parallel.global_batch(local, setup.mesh)
      if sample_batch is None:
        sample_batch = batch
        train_step = compile_synchronised(train_step, state, batch, name="train_step")
      state, step_metrics = train_step(state, batch)
      history.append(step_metrics)
      report(step)
      if step % config.log.every_steps == 0 or step == num_steps:
        metrics = _mean_metrics(history)
        history = []
        _check_finite(metrics, step, setup.checkpointer)
        writer.write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})
      if config.log.sample_every_steps > 0 and (
          step % config.log.sample_every_steps == 0 or step == num_steps):
        _sample(setup, state, sample_batch, step, writer)
      if preemption.check(step) or step % config.checkpoint.every_steps == 0 or step == num_steps:
        _save(setup, state, step, finite_fn)
      if preemption.requested:
        setup.checkpointer.close()
        logging.warning("stopped at step %d after SIGTERM; rerun the same command to resume",
                        step)
        writer.flush()
        return {"stopped_at": step, **metrics}
      if config.eval.every_steps > 0 and step % config.eval.every_steps == 0 and step != num_steps:
        run_eval(setup, state, step, writer)

  # ---- final evaluation ----
  final = dict(metrics)
  with report.timed("eval"):
    final.update(run_eval(setup, state, num_steps, writer))
  setup.checkpointer.close()
  writer.flush()
  return final


def evaluate(config, workdir: str, devices=None) -> dict[str, float]:
  setup = Setup(config, workdir, devices)
  if setup.checkpointer.latest_step() is None:
    raise errors.CheckpointError(
        f"no checkpoint in {setup.checkpointer.directory}; train first with --mode=train")
  state, step = setup.init_or_restore()
  writer = writers.create(workdir)
  metrics = run_eval(setup, state, step, writer)
  writer.flush()
  return metrics


def restore_state(config, workdir: str, devices=None):
  """(setup, state, step) of the latest checkpoint in workdir, for sampling/loading."""
  setup = Setup(config, workdir, devices)
  state, step = setup.init_or_restore()
  return setup, state, step


def abstract_batch(setup: Setup, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes, dtypes and shardings of a global train batch, without loading one."""
  cfg = setup.config
  loader = make_loader(cfg, setup.prepared, cfg.data.train_split, shuffle=False)
  sharding = parallel.batch_sharding(setup.mesh)
  return {k: jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=sharding)
          for k, (shape, dtype) in loader.signature().items()}


def compile_train_step(config, workdir: str, devices=None) -> dict[str, Any]:
  """Lowers and compiles the train step for config.mesh without running it.

  Returns (and writes to <workdir>/compile_report.json) the compiled program's
  FLOPs and memory per device, with the memory the sharding plan predicts for the
  train state. Needs the data (for the vocabulary and batch shapes) and, for
  GANs, the DAMSM, like training does; it initialises nothing on the devices.
  """
  setup = Setup(config, workdir, devices)
  state = ckpt_lib.abstract_like(setup.abstract_state, setup.state_shardings)
  batch = abstract_batch(setup, config.train.batch_size)
  with jax.set_mesh(setup.mesh):
    lowered = setup.jit_train_step().lower(state, batch)
    compiled = lowered.compile()
  report = {
      "method": config.method,
      "mesh": {k: int(v) for k, v in setup.mesh.shape.items()},
      "num_devices": int(setup.mesh.size),
      "num_processes": jax.process_count(),
      "device_kind": setup.mesh.devices.flat[0].device_kind,
      "platform": setup.mesh.devices.flat[0].platform,
      "global_batch": int(config.train.batch_size),
      "sharding_strategy": setup.sharding_plan.strategy,
      "state_bytes_total": int(setup.sharding_plan.total_bytes),
      "state_bytes_per_device": float(setup.sharding_plan.bytes_per_device),
      **compiled_stats(compiled),
  }
  logging.info("compile report: %s", json.dumps(report, indent=2))
  writers.write_text(os.path.join(workdir, "compile_report.json"), json.dumps(report, indent=2))
  return report


def compiled_stats(compiled) -> dict[str, Any]:
  """FLOPs and memory per device of a compiled SPMD program (one device's share)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):   # older jax: one dict per program
    cost = cost[0] if cost else {}
  cost = cost or {}
  out = {"flops_per_device": float(cost.get("flops", -1.0)),
         "transcendentals_per_device": float(cost.get("transcendentals", -1.0)),
         "bytes_accessed_per_device": float(cost.get("bytes accessed", -1.0))}
  memory = compiled.memory_analysis()
  if memory is not None:
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes", "generated_code_size_in_bytes")
    out["memory_per_device"] = {f: int(getattr(memory, f)) for f in fields
                                if hasattr(memory, f)}
    m = out["memory_per_device"]
    # Arguments + outputs that do not alias a (donated) argument + scratch.
    m["peak_estimate_bytes"] = (m.get("argument_size_in_bytes", 0)
                                + m.get("output_size_in_bytes", 0)
                                - m.get("alias_size_in_bytes", 0)
                                + m.get("temp_size_in_bytes", 0))
  return out
