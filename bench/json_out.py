"""Writes a benchmark's JSON report (the bench scripts' shared last step)."""

import json
import os


def write(report: dict, path: str) -> None:
  """Writes `report` to `path` (creating its folder) and says where."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(report, f, indent=2)
  print(f'wrote {path}')
