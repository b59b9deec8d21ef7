"""Sharding rules: which mesh axes each leaf of the train state is split over.

A state leaf is named by its path, e.g. 'nets/G/params/stage1/upblock_0/conv/kernel'
or 'nets/G/opt_state/0/mu/stage1/upblock_0/conv/kernel' (Adam's first moment of
that kernel). `config.sharding.rules` is a tuple of (regex, spec) pairs searched
in order (`re.search`, so 'conv/kernel' matches the parameter, its EMA copy and
its Adam moments alike); the first match wins. Leaves no rule matches follow the
strategy: 'data_parallel' replicates them, 'fsdp' splits every leaf of at least
`fsdp_min_size_mb` over 'data'. Independently of the strategy, when the mesh has
a 'model' axis larger than one, kernels with at least `model_min_features`
output features (the widest convolutions) split their last axis over 'model'.

A spec is one of
  'replicate'           every device holds the whole leaf;
  'fsdp'                the largest axis divisible by the 'data' size is split
                        over 'data' (replicated when no axis divides);
  'model'               the last axis is split over 'model' (when it divides);
  'model+fsdp'          both, the 'data' split on another axis;
  'a,b,...'             one entry per axis of the leaf: a mesh axis name, a
                        logical name mapped through `logical_axis_rules`, or
                        '_' / 'None' for an unsplit axis.
Explicit rules apply whatever the leaf's size; an explicit per-axis spec that
does not fit the leaf (rank, divisibility) is a ConfigError.

Under jit with Auto mesh axes, XLA's SPMD partitioner inserts the all-gathers and
reduce-scatters a layout needs, so every layout computes the same function; the
layout only moves memory and communication.
"""

import dataclasses
import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from t2ijax import errors

_MIB = 2.0 ** 20
_HEURISTICS = ('replicate', 'fsdp', 'model')


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str
  spec: str

  def matches(self, path: str) -> bool:
    return re.search(self.pattern, path) is not None


@dataclasses.dataclass(frozen=True)
class LeafPlan:
  """Where one state leaf lives, and which rule put it there."""
  path: str
  shape: tuple[int, ...]
  nbytes: int
  spec: P
  rule: str            # the matching pattern, or '<fsdp>' / '<data_parallel>'
  num_shards: int      # devices the leaf is split over (1: replicated)

  @property
  def bytes_per_device(self) -> float:
    return self.nbytes / self.num_shards


@dataclasses.dataclass
class Plan:
  """Shardings for a whole state, with the per-device memory they imply."""
  shardings: Any                       # a tree of NamedSharding like the state
  leaves: list[LeafPlan]
  mesh_shape: dict[str, int]
  strategy: str

  @property
  def total_bytes(self) -> int:
    return sum(l.nbytes for l in self.leaves)

  @property
  def bytes_per_device(self) -> float:
    return sum(l.bytes_per_device for l in self.leaves)

  def by_group(self) -> dict[str, tuple[float, float]]:
    """(total, per-device) bytes per network and part, e.g. 'G/opt_state'."""
    groups: dict[str, list[float]] = {}
    for leaf in self.leaves:
      g = groups.setdefault(_group(leaf.path), [0.0, 0.0])
      g[0] += leaf.nbytes
      g[1] += leaf.bytes_per_device
    return {k: (v[0], v[1]) for k, v in groups.items()}

  def by_rule(self) -> dict[str, tuple[int, float, float]]:
    """(leaves, total, per-device) bytes per rule, in first-use order."""
    rules: dict[str, list[float]] = {}
    for leaf in self.leaves:
      r = rules.setdefault(leaf.rule, [0, 0.0, 0.0])
      r[0] += 1
      r[1] += leaf.nbytes
      r[2] += leaf.bytes_per_device
    return {k: (int(v[0]), v[1], v[2]) for k, v in rules.items()}

  def summary(self) -> str:
    """A table for the start-up log: rules and networks, total vs per device."""
    lines = [f'sharding: strategy={self.strategy} mesh={self.mesh_shape}; '
             f'train state {self.total_bytes / _MIB:.2f} MiB in all, '
             f'{self.bytes_per_device / _MIB:.2f} MiB per device']
    lines.append(f'  {"rule":<40} {"leaves":>7} {"MiB":>10} {"MiB/device":>11}')
    for rule, (n, total, per) in self.by_rule().items():
      lines.append(f'  {rule[:40]:<40} {n:>7} {total / _MIB:>10.2f} {per / _MIB:>11.2f}')
    lines.append(f'  {"network/part":<40} {"":>7} {"MiB":>10} {"MiB/device":>11}')
    for group, (total, per) in sorted(self.by_group().items()):
      lines.append(f'  {group[:40]:<40} {"":>7} {total / _MIB:>10.2f} {per / _MIB:>11.2f}')
    return '\n'.join(lines)


def path_string(path: Sequence[Any]) -> str:
  """'nets/G/params/conv/kernel' for a jax key path."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    else:
      parts.append(str(key))
  return '/'.join(parts)


def _group(path: str) -> str:
  parts = path.split('/')
  if len(parts) >= 3 and parts[0] == 'nets':
    return f'{parts[1]}/{parts[2]}'
  return parts[0]


def parse_rules(sharding_config) -> list[Rule]:
  """The config's (regex, spec) pairs, checked."""
  rules = []
  for i, item in enumerate(sharding_config.rules or ()):
    if not (isinstance(item, (tuple, list)) and len(item) == 2
            and all(isinstance(x, str) for x in item)):
      raise errors.ConfigError(
          f'sharding.rules[{i}]={item!r} is not a (regex, spec) pair of strings; '
          "write e.g. --config.sharding.rules=\"(('G/.*kernel', 'fsdp'),)\"")
    try:
      re.compile(item[0])
    except re.error as e:
      raise errors.ConfigError(
          f'sharding.rules[{i}] pattern {item[0]!r} is not a valid regex ({e})') from None
    rules.append(Rule(item[0], item[1].strip()))
  return rules


def _logical_table(sharding_config, mesh_axes) -> dict[str, str | None]:
  table = {}
  for item in sharding_config.logical_axis_rules or ():
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
      raise errors.ConfigError(
          f'sharding.logical_axis_rules entry {item!r} is not a (logical name, mesh '
          "axis or None) pair; write e.g. (('cout', 'model'), ('cin', None))")
    name, axis = item
    if axis is not None and axis not in mesh_axes:
      raise errors.ConfigError(
          f'sharding.logical_axis_rules maps {name!r} to {axis!r}, which is not a mesh '
          f'axis; the mesh axes are {tuple(mesh_axes)}')
    table.setdefault(name, axis)   # the first mapping of a name wins
  return table


class _Planner:
  """Turns a spec string into a PartitionSpec for one leaf."""

  def __init__(self, mesh_shape: dict[str, int], sharding_config):
    self.mesh_shape = mesh_shape
    self.config = sharding_config
    self.logical = _logical_table(sharding_config, mesh_shape)
    self.fsdp_min_bytes = float(sharding_config.fsdp_min_size_mb) * _MIB
    self.model_min = int(sharding_config.model_min_features)

  def heuristic(self, parts: Sequence[str], shape, nbytes, explicit: bool) -> list:
    dims: list = [None] * len(shape)
    for part in parts:
      if part == 'model':
        self._model(dims, shape, min_features=0 if explicit else self.model_min)
      elif part == 'fsdp':
        if explicit or nbytes >= self.fsdp_min_bytes:
          self._fsdp(dims, shape)
    return dims

  def _model(self, dims, shape, min_features):
    n = self.mesh_shape.get('model', 1)
    if n <= 1 or len(shape) < 2 or min_features < 0:
      return
    if shape[-1] >= min_features and shape[-1] % n == 0 and dims[-1] is None:
      dims[-1] = 'model'

  def _fsdp(self, dims, shape):
    n = self.mesh_shape.get('data', 1)
    if n <= 1:
      return
    # The largest free axis that divides evenly (ties: the later axis).
    best = None
    for i, size in enumerate(shape):
      if dims[i] is None and size % n == 0 and size >= n:
        if best is None or size >= shape[best]:
          best = i
    if best is not None:
      dims[best] = 'data'

  def explicit(self, spec: str, path: str, shape) -> list:
    entries = [e.strip() for e in spec.split(',')]
    if len(entries) != len(shape):
      raise errors.ConfigError(
          f'sharding spec {spec!r} has {len(entries)} entries but {path} has shape '
          f'{tuple(shape)}; give one entry per axis, or narrow the rule\'s regex')
    dims = []
    for entry, size in zip(entries, shape):
      if entry in ('', '_', 'None', 'none'):
        axis = None
      elif entry in self.mesh_shape:
        axis = entry
      elif entry in self.logical:
        axis = self.logical[entry]
      else:
        raise errors.ConfigError(
            f'sharding spec {spec!r} (for {path}) names {entry!r}, which is neither a '
            f'mesh axis {tuple(self.mesh_shape)} nor a logical name in '
            'sharding.logical_axis_rules; add (name, axis) to logical_axis_rules')
      if axis is not None and size % self.mesh_shape[axis]:
        raise errors.ConfigError(
            f'sharding spec {spec!r} splits an axis of size {size} of {path} over '
            f'{axis!r} of size {self.mesh_shape[axis]}, which does not divide it')
      if axis is not None and axis in dims:
        raise errors.ConfigError(
            f'sharding spec {spec!r} uses mesh axis {axis!r} twice for {path}')
      dims.append(axis)
    return dims

  def leaf(self, spec: str, path: str, shape, nbytes, explicit: bool) -> list:
    parts = spec.split('+')
    if all(p in _HEURISTICS for p in parts):
      return self.heuristic(parts, shape, nbytes, explicit)
    if '+' in spec:
      raise errors.ConfigError(
          f"sharding spec {spec!r}: '+' combines only {_HEURISTICS}")
    return self.explicit(spec, path, shape)


def plan(abstract_state: Any, mesh: jax.sharding.Mesh, sharding_config=None) -> Plan:
  """Shardings of every leaf of `abstract_state` (arrays or ShapeDtypeStructs)."""
  mesh_shape = {k: int(v) for k, v in mesh.shape.items()}
  if sharding_config is None:           # configs written before sharding rules
    import ml_collections
    sharding_config = ml_collections.ConfigDict(dict(
        strategy='data_parallel', fsdp_min_size_mb=1.0, model_min_features=-1,
        rules=(), logical_axis_rules=()))
  strategy = sharding_config.strategy
  if strategy not in ('data_parallel', 'fsdp'):
    raise errors.ConfigError(
        f"sharding.strategy={strategy!r} is not 'data_parallel' or 'fsdp'")
  rules = parse_rules(sharding_config)
  default = 'model+fsdp' if strategy == 'fsdp' else 'model'
  planner = _Planner(mesh_shape, sharding_config)
  leaves = []

  def one(path, leaf):
    name = path_string(path)
    shape = tuple(int(s) for s in np.shape(leaf))
    nbytes = math.prod(shape) * np.dtype(leaf.dtype).itemsize
    rule = next((r for r in rules if r.matches(name)), None)
    if rule is None:
      dims = planner.leaf(default, name, shape, nbytes, explicit=False)
      label = f'<{strategy}>'
    else:
      dims = planner.leaf(rule.spec, name, shape, nbytes, explicit=True)
      label = rule.pattern
    shards = math.prod(mesh_shape[a] for a in dims if a is not None)
    spec = P(*dims) if any(a is not None for a in dims) else P()
    leaves.append(LeafPlan(name, shape, nbytes, spec, label, shards))
    return NamedSharding(mesh, spec)

  shardings = jax.tree_util.tree_map_with_path(one, abstract_state)
  return Plan(shardings, leaves, mesh_shape, strategy)
