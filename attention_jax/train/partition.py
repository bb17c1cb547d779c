"""Device mesh, logical axis rules and shardings (DESIGN conventions 2 and 7).

Parameters and activations carry logical axis names ('batch', 'heads', ...);
`LOGICAL_RULES` maps them onto the mesh axes ('data', 'model'). A name the
rules do not list stays replicated.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")
LOGICAL_RULES = (
    ("batch", "data"),
    ("heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
)


def make_mesh(mesh_shape: Sequence[int] = (-1, 1)) -> Mesh:
  """A ('data', 'model') mesh; one -1 takes the remaining devices.

  Raises a ValueError naming `mesh_shape` when it does not fit the devices.
  """
  shape = list(mesh_shape)
  count = jax.device_count()
  if len(shape) != 2 or shape.count(-1) > 1:
    raise ValueError(f"mesh_shape must be two sizes (data, model), at most one -1; "
                     f"got {tuple(mesh_shape)}")
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if known <= 0 or count % known:
      raise ValueError(f"mesh_shape {tuple(mesh_shape)} does not divide {count} devices")
    shape[shape.index(-1)] = count // known
  if int(np.prod(shape)) != count:
    raise ValueError(f"mesh_shape {tuple(mesh_shape)} needs {int(np.prod(shape))} devices, "
                     f"there are {count}")
  # Auto axes: linen's logical rules place the shardings (explicit is jax 0.10's default).
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def logical_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree of (possibly `nn.LogicallyPartitioned`) abstract arrays."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches split along their leading axis over 'data'."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def activate(mesh: Mesh):
  """Context: `mesh` current and the logical rules on, for tracing sharded code."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """This process's NumPy batch -> global arrays split over 'data' (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
