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

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree

__all__ = ["task_vector", "apply_task_vectors", "port_patch"]

PyTree = Any


def _check_same(a: PyTree, b: PyTree, la: str, lb: str) -> tuple[dict, dict]:
  fa, fb = jtree.flatten(a), jtree.flatten(b)
  if set(fa) != set(fb):
    raise ValueError(f"{la} and {lb} have different leaves: only in {la}: "
                     f"{sorted(set(fa) - set(fb))[:5]}, only in {lb}: {sorted(set(fb) - set(fa))[:5]}")
  for p in fa:
    if np.shape(fa[p]) != np.shape(fb[p]):
      raise ValueError(f"tensor {p!r}: shape {np.shape(fa[p])} in {la} but {np.shape(fb[p])} in {lb}")
  return fa, fb


def task_vector(finetuned: PyTree, base: PyTree) -> PyTree:
  """``finetuned - base`` leaf by leaf (float32 math, dtype of ``finetuned``)."""
  ff, fb = _check_same(finetuned, base, "finetuned", "base")
  out = {p: (jnp.asarray(ff[p], jnp.float32) - jnp.asarray(fb[p], jnp.float32)).astype(
      jnp.result_type(ff[p])) for p in ff}
  return jtree.unflatten(out, like=finetuned)


def apply_task_vectors(base: PyTree, vectors: Sequence[PyTree], scales: Any = 1.0, *,
                       negate: bool = False) -> PyTree:
  """``base + sum_i s_i v_i`` (``- sum`` with ``negate``); ``scales`` is a scalar
  or one value per vector (arrays allowed: jit/vmap/grad friendly)."""
  vectors = list(vectors)
  s = jnp.broadcast_to(jnp.asarray(scales, jnp.float32), (len(vectors),))
  if negate:
    s = -s
  fb = jtree.flatten(base)
  fvs = [_check_same(base, v, "base", f"task vector {i}")[1] for i, v in enumerate(vectors)]
  out = {}
  for p, b in fb.items():
    acc = jnp.asarray(b, jnp.float32)
    for i, fv in enumerate(fvs):
      acc = acc + s[i] * jnp.asarray(fv[p], jnp.float32)
    out[p] = acc.astype(jnp.result_type(b))
  return jtree.unflatten(out, like=base)


def port_patch(new_base: PyTree, old_base: PyTree, old_finetuned: PyTree, *,
               scale: Any = 1.0) -> PyTree:
  """PortLLM: ``new_base + scale * (old_finetuned - old_base)``.

  Example:
    >>> import jax.numpy as jnp
    >>> port_patch({'w': jnp.array([5.])}, {'w': jnp.array([1.])},
    ...            {'w': jnp.array([1.5])})['w'].tolist()
    [5.5]
  """
  _check_same(new_base, old_base, "new_base", "old_base")
  return apply_task_vectors(new_base, [task_vector(old_finetuned, old_base)], scale)
