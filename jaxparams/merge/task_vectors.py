"""Task vectors and patch porting.

``task_vector(finetuned, base) = finetuned - base``;
``apply_task_vectors(base, vectors, scales)`` adds scaled vectors (negative
scales or ``negate=True`` subtract them: forgetting by negation, Ilharco et
al. 2023); ``port_patch(new_base, old_base, old_finetuned)`` applies a
fine-tune's delta to an updated base (PortLLM, Khan et al. 2025).

Example:
  >>> import jax.numpy as jnp
  >>> base, ft = {'w': jnp.array([1., 1.])}, {'w': jnp.array([2., 0.])}
  >>> tv = task_vector(ft, base)
  >>> apply_task_vectors(base, [tv], negate=True)['w'].tolist()
  [0.0, 2.0]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp

from jaxparams.transform import Transform, apply_tree, finite, same_shapes

__all__ = ["task_vector", "apply_task_vectors", "port_patch", "TASK_VECTOR", "ADD_TASK_VECTORS"]

PyTree = Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskVectorConfig:
  """``task_vector`` has no parameters."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class AddTaskVectorsConfig:
  """``scales``: a scalar or one per vector (arrays: vmap/grad); ``negate`` subtracts."""
  scales: Any = 1.0
  negate: bool = False


def _difference(base, models, config):
  ft = models[0]
  return (jnp.asarray(ft, jnp.float32) - jnp.asarray(base, jnp.float32)).astype(
      jnp.result_type(ft))


def _add(base, vectors, config):
  s = jnp.broadcast_to(jnp.asarray(config.scales, jnp.float32), (len(vectors),))
  if config.negate:
    s = -s
  acc = jnp.asarray(base, jnp.float32)
  for i, v in enumerate(vectors):
    acc = acc + s[i] * jnp.asarray(v, jnp.float32)
  return acc.astype(jnp.result_type(base))


TASK_VECTOR = Transform(
    name="task_vector", fn=_difference, config=TaskVectorConfig, checks=(same_shapes, finite),
    inputs="base+models", base="required", min_models=1, max_models=1,
    description="finetuned - base (float32 math, dtype of the fine-tuned tensor)")
"""Record: the task vector of one fine-tuned tensor (base = the base, model 0 = fine-tuned)."""

ADD_TASK_VECTORS = Transform(
    name="add_task_vectors", fn=_add, config=AddTaskVectorsConfig, array_params=("scales",),
    checks=(same_shapes, finite), inputs="base+models", base="required", min_models=0,
    description="base + sum_i s_i v_i (float32 math, dtype of the base)")
"""Record: adds scaled task vectors (the models) to the base."""


def task_vector(finetuned: PyTree, base: PyTree) -> PyTree:
  """``finetuned - base`` leaf by leaf (float32 math, dtype of ``finetuned``)."""
  out = apply_tree(TASK_VECTOR, base, [finetuned], labels=("base", "finetuned"))
  return out


def apply_task_vectors(base: PyTree, vectors: Sequence[PyTree], scales: Any = 1.0, *,
                       negate: bool = False) -> PyTree:
  """``base + sum_i s_i v_i`` (``- sum`` with ``negate``); ``scales`` is a scalar
  or one value per vector (arrays allowed: jit/vmap/grad friendly)."""
  vectors = list(vectors)
  scales = tuple(scales) if isinstance(scales, list) else scales
  labels = ("base",) + tuple(f"task vector {i}" for i in range(len(vectors)))
  return apply_tree(ADD_TASK_VECTORS, base, vectors, labels=labels,
                    config=AddTaskVectorsConfig(scales=scales, negate=negate))


def port_patch(new_base: PyTree, old_base: PyTree, old_finetuned: PyTree, *,
               scale: Any = 1.0) -> PyTree:
  """PortLLM: ``new_base + scale * (old_finetuned - old_base)``.

  Example:
    >>> import jax.numpy as jnp
    >>> port_patch({'w': jnp.array([5.])}, {'w': jnp.array([1.])},
    ...            {'w': jnp.array([1.5])})['w'].tolist()
    [5.5]
  """
  return apply_task_vectors(new_base, [task_vector(old_finetuned, old_base)], scale)
