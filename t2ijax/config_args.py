"""Parses the string after the colon in `--config=configs/x.py:ARG`.

`ARG` is a comma-separated list of `key=value` pairs; a bare word is either the
variant (the first field) or, if it names a boolean field, sets it to True. So
`configs/dmgan.py:coco`, `configs/dmgan.py:demo,runlocal` and
`configs/damsm.py:variant=cub,batch=24` all work.
"""

from typing import Any

import ml_collections

from t2ijax import errors


def _coerce(value: str, default: Any) -> Any:
  if isinstance(default, bool):
    if value.lower() in ("1", "true", "yes", ""):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise errors.ConfigError(f"expected a boolean, got {value!r}")
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    return float(value)
  return value


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Returns a ConfigDict of `defaults` updated from `arg`; unknown keys are errors."""
  result = dict(defaults)
  first = next(iter(defaults)) if defaults else None
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    if "=" in part:
      key, value = part.split("=", 1)
    elif part in defaults and isinstance(defaults[part], bool):
      key, value = part, "true"
    else:
      key, value = first, part
    if key not in defaults:
      raise errors.ConfigError(
          f"unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}")
    result[key] = _coerce(value, defaults[key])
  return ml_collections.ConfigDict(result)


def check_choice(name: str, value: str, choices) -> str:
  if value not in choices:
    raise errors.ConfigError(f"{name}={value!r} is not one of {sorted(choices)}")
  return value
