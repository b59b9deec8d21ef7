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


def gan(method: str, data_dir: str, damsm_workdir: str):
  """A two-stage (64/128) GAN of tiny width on tiny shapes, with a given DAMSM."""
  config = load_config(method, "demo")
  apply(config, {
      "data.shapes.num_train": 32, "data.shapes.num_test": 16,
      "data.captions_per_image": 3, "data.max_words": 8, "data.num_parallel_calls": 2,
      "model.ngf": 4, "model.ndf": 4, "train.batch_size": 8, "train.num_steps": 3,
      "checkpoint.every_steps": 3, "checkpoint.use_async": False, "log.every_steps": 1,
      "log.sample_every_steps": 3, "log.num_samples": 2,
      "eval.batch_size": 8, "eval.num_batches": 1, "eval.shapes_classifier": False,
  })
  config.data.data_dir = data_dir
  config.damsm.workdir = damsm_workdir
  return config


def damsm_for_gan(data_dir: str):
  """The tiny DAMSM config whose data (captions, hence vocabulary) a tiny GAN shares."""
  config = damsm(data_dir)
  apply(config, {"data.captions_per_image": 3, "data.max_words": 8, "train.num_steps": 2,
                 "data.shapes.num_train": 32, "data.shapes.num_test": 16})
  return config
