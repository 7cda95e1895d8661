"""Devices for the trainer: multi-process start-up, the ``('data', 'model')`` mesh, shardings.

Params and optimizer state are replicated, or with ``config.mesh.model > 1`` sharded along
``'model'`` on their last axis that divides evenly; batches are sharded on ``'data'``.

Example:
  >>> mesh = make_mesh(1)
  >>> mesh.axis_names
  ('data', 'model')
  >>> leaf_sharding(mesh, (4, 8)).spec == P()
  True
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["count_params", "host", "leaf_sharding", "make_mesh", "maybe_initialize_distributed",
           "put", "shardings"]


def _multi_process_env() -> bool:
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  for var in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
    try:
      if int(env.get(var, "1")) > 1:
        return True
    except ValueError:
      pass
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize_distributed(mode: str = "auto") -> bool:
  """Calls ``jax.distributed.initialize()`` for multi-process launches; returns whether it did.

  ``mode='auto'`` detects a multi-process launch from the environment (``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES``, SLURM/Open MPI/PMI task counts > 1, multi-host TPU worker lists);
  ``'on'`` always initialises (cluster auto-detection by JAX), ``'off'`` never.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"config.distributed must be 'auto', 'on' or 'off', found {mode!r}")
  if mode == "off" or jax.distributed.is_initialized():
    return False
  if mode == "on" or _multi_process_env():
    jax.distributed.initialize()
    return True
  return False


def make_mesh(model_axis: int = 1) -> Mesh:
  """A ``('data', 'model')`` mesh over all devices (``model_axis`` devices on ``'model'``)."""
  devices = np.asarray(jax.devices())
  if model_axis < 1 or devices.size % model_axis:
    raise ValueError(f"config.mesh.model={model_axis} must divide the device count {devices.size}")
  return Mesh(devices.reshape(devices.size // model_axis, model_axis), ("data", "model"))


def leaf_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
  """Sharded on ``'model'`` along the last axis it divides (matrices only), else replicated."""
  m = mesh.shape["model"]
  if m > 1:
    for axis in range(len(shape) - 1, -1, -1):
      if len(shape) >= 2 and shape[axis] % m == 0:
        return NamedSharding(mesh, P(*([None] * axis + ["model"])))
  return NamedSharding(mesh, P())


def shardings(mesh: Mesh, tree: Any) -> Any:
  """:func:`leaf_sharding` of every leaf of ``tree`` (arrays or shape structs)."""
  return jax.tree.map(lambda x: leaf_sharding(mesh, tuple(x.shape)), tree)


def put(tree: Any, shardings: Any) -> Any:
  """Host (numpy-convertible) tree -> global arrays (works on several processes too)."""
  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


def host(tree: Any) -> Any:
  """Global arrays -> host numpy tree (gathered across processes when there are several)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def count_params(params: Any) -> int:
  """Number of scalars in ``params``."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
