"""Transform records and their two drivers: one definition per method, run everywhere.

* :class:`Transform` (``record.py``): the per-tensor pure function, its frozen
  config (defaults once), array hyperparameters, checks, arity, randomness.
* :class:`Registry` (``registry.py``): name -> record, ``names()``, errors
  listing the valid names.
* :func:`apply_tree` (``tree_driver.py``): over in-memory pytrees with
  ``where=`` (jit/vmap/grad-able, sharding kept).
* :func:`stream_checkpoints` (``stream_driver.py``): over safetensors on disk,
  tensor by tensor, prefetching (``prefetch.py``), atomic sharded output; :func:`run_tasks`
  runs the same task loop into a writer the caller owns (quantization's layouts).
* ``checks.py``: :data:`same_shapes`, :data:`finite`, :data:`float_inputs`,
  :func:`in_range`.

Example:
  >>> import dataclasses, jax.numpy as jnp
  >>> import jaxparams.transform as jt
  >>> @dataclasses.dataclass(frozen=True, kw_only=True)
  ... class ClipConfig:
  ...   limit: float = 1.0
  >>> clip = jt.Transform(name='clip', fn=lambda x, c: jnp.clip(x, -c.limit, c.limit),
  ...                     config=ClipConfig, array_params=('limit',),
  ...                     checks=(jt.finite, jt.in_range('limit', 0.0)))
  >>> jt.apply_tree(clip, {'w': jnp.array([-3., 0.5, 2.])})['w'].tolist()
  [-1.0, 0.5, 1.0]
"""

from jaxparams.transform.checks import (Check, CheckContext, NonFiniteError, finite, float_inputs,
                                        in_range, is_traced, same_shapes)
from jaxparams.transform.keys import tensor_key
from jaxparams.transform.prefetch import Prefetcher, read_tensor
from jaxparams.transform.record import Transform, param_fields
from jaxparams.transform.registry import Registry
from jaxparams.transform.stream_driver import (StreamTask, make_sharding, run_tasks,
                                               stream_checkpoints)
from jaxparams.transform.tree_driver import apply_tree, check_same_leaves

__all__ = [
    "Check", "CheckContext", "NonFiniteError", "Prefetcher", "Registry", "StreamTask", "Transform",
    "apply_tree",
    "check_same_leaves", "finite", "float_inputs", "in_range", "is_traced", "make_sharding",
    "param_fields", "read_tensor", "run_tasks", "same_shapes", "stream_checkpoints", "tensor_key",
]
