"""Method name (config.method) -> its Method class, imported lazily."""

import importlib

from t2ijax import errors

METHODS = {
    "damsm": "t2ijax.trainers.damsm:DamsmMethod",
    "attngan": "t2ijax.trainers.attngan:AttnGan",
    "dmgan": "t2ijax.trainers.attngan:DmGan",
    "dfgan": "t2ijax.trainers.dfgan:DfGan",
}


def method_class(name: str):
  if name not in METHODS:
    raise errors.ConfigError(f"config.method={name!r} is not one of {sorted(METHODS)}")
  module, cls = METHODS[name].split(":")
  return getattr(importlib.import_module(module), cls)
