"""Device mesh and sharding from the config.

Batch axis on `data`; the train state is laid out by `config.sharding`
(t2ijax/sharding_rules.py: replicated by default, FSDP or a 'model' axis on
request). Meshes are built with Auto axis types and entered with `jax.set_mesh`
(see DESIGN.md: Explicit axes and the old `with mesh:` both break flax logical
constraints).
"""

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from t2ijax import errors
from t2ijax import sharding_rules


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  shape = list(shape)
  if shape.count(-1) > 1:
    raise errors.ConfigError(f"mesh.shape={tuple(shape)} may contain at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise errors.ConfigError(
          f"mesh.shape={tuple(shape)} does not divide the {num_devices} devices")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise errors.ConfigError(
        f"mesh.shape={tuple(shape)} needs {math.prod(shape)} devices, "
        f"{num_devices} are available; use -1 for the data axis")
  return tuple(shape)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  axes = tuple(mesh_config.axes)
  shape = resolve_mesh_shape(mesh_config.shape, len(devices))
  if len(devices) == len(jax.devices()):
    return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(axes))
  # A subset of the devices (tests compare a single device against eight).
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), axes,
                           axis_types=(AxisType.Auto,) * len(axes))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, replicated over the other axes."""
  return NamedSharding(mesh, P("data"))


def data_axis_size(mesh) -> int:
  return mesh.shape["data"]


def check_batch_size(global_batch: int, mesh) -> None:
  n = data_axis_size(mesh)
  if global_batch % n or global_batch % jax.process_count():
    raise errors.ConfigError(
        f"train.batch_size={global_batch} must be divisible by the data-parallel "
        f"size {n} and the process count {jax.process_count()}")


def state_shardings(abstract_state: Any, mesh, sharding_config=None) -> Any:
  """NamedShardings of the train state's leaves under `config.sharding` (None:
  replicated everywhere); `sharding_rules.plan` also gives the memory summary."""
  return sharding_rules.plan(abstract_state, mesh, sharding_config).shardings


def check_process_rows(global_batch: int, mesh) -> None:
  """Each process must hold rows [i * B / n, (i + 1) * B / n) of a global batch,
  the rows the input pipeline loads for it (pipeline.local_rows)."""
  n, i = jax.process_count(), jax.process_index()
  if n == 1:
    return
  sharding = batch_sharding(mesh)
  indices = sharding.addressable_devices_indices_map((global_batch,))
  starts = sorted({(idx[0].start or 0) for idx in indices.values()})
  stops = sorted({(global_batch if idx[0].stop is None else idx[0].stop)
                  for idx in indices.values()})
  per = global_batch // n
  if starts[0] != i * per or stops[-1] != (i + 1) * per:
    raise errors.ConfigError(
        f"process {i} holds rows {starts[0]}..{stops[-1]} of the global batch of "
        f"{global_batch} on mesh {dict(mesh.shape)}, but loads rows {i * per}.."
        f"{(i + 1) * per}: the mesh's 'data' axis must be laid out process by process. "
        "Put 'data' first in mesh.axes and make its size a multiple of the process count")


def replicate(tree: Any, mesh) -> Any:
  """The same arrays, replicated on every device, so that every process can read
  them (`jax.device_get` needs addressable data). All processes must call it."""
  return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}
