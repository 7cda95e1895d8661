"""Model merging: every mergekit 0.1.5 method as a transform record, run by two drivers.

Each method is one :class:`~jaxparams.transform.Transform` record in
:data:`METHODS` (per-tensor pure function, config dataclass with mergekit's
parameters and defaults, checks), run by

* the tree API on in-memory pytrees (``linear``, ``ties``, ... and
  :func:`merge_trees`; jit-able, vmap-able over weights, differentiable in the
  continuous coefficients where the math allows it), and
* the streaming driver over checkpoints on disk (:func:`merge_checkpoints`,
  mergekit YAML recipes),

both through :mod:`jaxparams.transform`, so both run the same checks.
:func:`get_method` gives a record in mergekit's vocabulary
(:class:`MergeMethod`, ``merge_tensor`` for one tensor).

Example:
  >>> import jax.numpy as jnp, jaxparams as jp
  >>> base = {'w': jnp.zeros(3)}
  >>> a, b = {'w': jnp.array([1., -1., 2.])}, {'w': jnp.array([1., 1., -4.])}
  >>> jp.merge.task_arithmetic(base, [a, b], weights=[0.5, 0.5])['w'].tolist()
  [1.0, 0.0, -1.0]
"""

from jaxparams.merge.plan import TensorTask, plan_merge
from jaxparams.merge.recipe import Recipe, load_recipe, parse_recipe
from jaxparams.merge.registry import (METHODS, REQUIRED, MergeMethod, get_method, get_record,
                                      method_names, tensor_key)
from jaxparams.io.sizes import parse_size  # one size parser for every command
from jaxparams.merge.stream import merge_checkpoints, plan_checkpoints
from jaxparams.merge.task_vectors import apply_task_vectors, port_patch, task_vector
from jaxparams.merge.vocab import VocabAlignment, build_alignment
from jaxparams.merge.tree_api import (arcee_fusion, breadcrumbs, breadcrumbs_ties, dare_linear,
                                      dare_ties, della, della_linear, karcher, linear, merge_trees,
                                      model_stock, multislerp, nearswap, nuslerp, passthrough, ram,
                                      ramplus_tl, sce, slerp, task_arithmetic, ties)
import importlib as _importlib

__all__ = [
    # registry of records (per-tensor)
    "METHODS", "REQUIRED", "MergeMethod", "get_method", "get_record", "method_names",
    "tensor_key",
    # tree API: one function per mergekit method
    "arcee_fusion", "breadcrumbs", "breadcrumbs_ties", "dare_linear", "dare_ties", "della",
    "della_linear", "karcher", "linear", "model_stock", "multislerp", "nearswap", "nuslerp",
    "passthrough", "ram", "ramplus_tl", "sce", "slerp", "task_arithmetic", "ties", "merge_trees",
    # task vectors
    "apply_task_vectors", "port_patch", "task_vector",
    # recipes and the streaming driver (HF checkpoints on disk)
    "Recipe", "TensorTask", "VocabAlignment", "build_alignment", "load_recipe", "merge_checkpoints",
    "parse_recipe", "parse_size", "plan_checkpoints", "plan_merge",
    # merging that learns (Fisher, RegMean, AdaMerging, CMA-ES, MAP)
    "learned",
]


def __getattr__(name: str):
  if name == "learned":  # data-/search-driven merges (optax, calib): imported on first use
    return _importlib.import_module(f"{__name__}.learned")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
