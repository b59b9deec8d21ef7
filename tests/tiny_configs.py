"""Tiny variants of the method configs: seconds to compile and run on a CPU."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(
      f"configs_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# Overrides as command-line flags too, so subprocess tests run the same config.
DAMSM_FLAGS = {
    "data.shapes.num_train": 64,
    "data.shapes.num_test": 32,
    "data.shapes.image_size": 32,
    "data.image_sizes": (32,),
    "data.max_words": 8,
    "data.captions_per_image": 3,
    "data.num_parallel_calls": 2,
    "model.embedding_dim": 16,
    "model.nef": 16,
    "model.tiny_width": 8,
    "train.batch_size": 8,
    "train.num_steps": 6,
    "checkpoint.every_steps": 2,
    "checkpoint.use_async": False,
    "log.every_steps": 2,
    "log.sample_every_steps": -1,
    "eval.batch_size": 8,
    "eval.num_batches": 2,
}


def apply(config, overrides: dict):
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def damsm(data_dir: str):
  config = apply(load_config("damsm", "demo"), DAMSM_FLAGS)
  config.data.data_dir = data_dir
  return config


def as_flags(overrides: dict) -> list[str]:
  out = []
  for key, value in overrides.items():
    if isinstance(value, tuple):
      value = "(" + ",".join(str(v) for v in value) + ",)"
    out.append(f"--config.{key}={value}")
  return out
