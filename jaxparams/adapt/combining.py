"""Combining LoRA adapters: PEFT's ``add_weighted_adapter`` types, plus an exact ``linear``.

``combine(adapters, weights, combination_type, ...)`` returns a new adapter tree (scale 1 per
module, as PEFT's ``r = lora_alpha = new_rank``). With ``s_i`` each module's scaling:

* ``'linear'`` (**exact**): the weighted sum of the deltas ``sum_i w_i s_i a_i b_i``, written as
  the concatenation ``a' = [w_1 s_1 a_1 | w_2 s_2 a_2 ...]``, ``b' = [b_1; b_2; ...]`` (rank
  ``sum r_i``). Identical to ``'cat'``.
* ``'cat'``: PEFT's ``cat`` (exact; PEFT also zero-pads to the sum of the adapters' max ranks, we
  do not: same product).
* ``'peft_linear'``, ``'ties'``, ``'dare_linear'``, ``'dare_ties'``, ``'magnitude_prune'``: PEFT's
  behaviour: **A and B are mixed separately** (``A' = f([A_i], sgn(w_i s_i) sqrt|w_i s_i|)``,
  ``B' = f([B_i], sqrt|w_i s_i|)`` with ``f`` the merge function), which needs equal ranks and
  is *not* the weighted sum of the deltas: ``B'A'`` has cross terms ``B_i A_j`` (PEFT's ``linear``
  with weights ``[1, -1]`` is not ``B_1 A_1 - B_2 A_2``). Kept for compatibility, by PEFT's names.
* ``'svd'``, ``'ties_svd'``, ``'dare_linear_svd'``, ``'dare_ties_svd'``,
  ``'magnitude_prune_svd'``: merge the full deltas ``s_i B_i A_i`` with weights ``w_i`` (task
  arithmetic or the named merge function), then truncate by SVD to ``svd_rank`` (default: the
  largest input rank): ``B = U_r S_r``, ``A = Vh_r`` (PEFT's split), optional ``svd_clamp``
  quantile clamp. Without clamp and pruning the error is the Eckart-Young optimum.

The merge functions follow ``peft.utils.merge_utils`` exactly: magnitude pruning keeps the top
``int(density * n)`` entries by ``|x|`` of each tensor; DARE keeps each entry with probability
``density`` and divides by ``density`` (masks from ``key`` -- or given with ``masks=`` to reproduce
a run); the majority sign is that of ``sum t_i`` (``'total'``) or ``sum sign(t_i)``
(``'frequency'``) of the *unweighted* pruned tensors, ``>= 0`` counting as +; the disjoint merge
divides the agreeing weighted sum by the *count* of agreeing tensors. (mergekit's TIES, in
:mod:`jaxparams.merge`, elects signs on the weighted sum and divides by the agreeing weights, so
those records are not reused here: the results would differ from PEFT's.)

Example:
  >>> import jax.numpy as jnp
  >>> a1 = {'k': {'a': jnp.ones((3, 1)), 'b': jnp.ones((1, 2)), 'scale': jnp.float32(1.0)}}
  >>> a2 = {'k': {'a': jnp.ones((3, 1)), 'b': 2 * jnp.ones((1, 2)), 'scale': jnp.float32(0.5)}}
  >>> out = combine([a1, a2], [1.0, -1.0], 'linear')
  >>> (out['k']['a'] @ out['k']['b']).tolist()[0]     # 1*1*1 - 1*0.5*2 = 0
  [0.0, 0.0]
  >>> out = combine([a1, a2], [1.0, -1.0], 'peft_linear')
  >>> [round(v, 5) for v in (out['k']['a'] @ out['k']['b']).tolist()[0]]  # cross terms
  [0.70711, 0.70711]
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxparams.adapt import records
from jaxparams.adapt.merge_utils import (disjoint_merge, magnitude_prune_tensor,  # noqa: F401
                                         majority_sign_mask, peft_merge, random_prune_tensor)
from jaxparams.adapt.tree_api import _from_entries, entries

__all__ = ["combine", "COMBINATION_TYPES", "magnitude_prune_tensor", "random_prune_tensor",
           "majority_sign_mask", "disjoint_merge", "merge_tensors", "peft_merge"]

_AB_TYPES = ("peft_linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
_SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
COMBINATION_TYPES = ("linear", "cat") + _AB_TYPES + _SVD_TYPES


def merge_tensors(kind: str, tensors: Sequence[jax.Array], weights: Sequence[Any], *,
                  density: float | None = None, majority_sign_method: str = "total",
                  key: jax.Array | None = None, masks: Sequence[jax.Array] | None = None,
                  path: str = "") -> jax.Array:
  """One of PEFT's merge functions on a list of same-shaped tensors, through its record.

  ``kind``: ``'linear'`` (task arithmetic: mergekit's ``task_arithmetic`` record on a zero base,
  the same sum), ``'ties'``, ``'dare_linear'``, ``'dare_ties'``, ``'magnitude_prune'`` (the
  ``peft_*`` records of :mod:`jaxparams.adapt.records`, PEFT's semantics).

  Example:
    >>> import jax.numpy as jnp
    >>> merge_tensors('ties', [jnp.array([1., -2.]), jnp.array([3., 1.])], [1.0, 1.0],
    ...               density=1.0).tolist()
    [2.0, -2.0]
  """
  ts = [jnp.asarray(t, jnp.float32) for t in tensors]
  if kind == "linear":
    from jaxparams.merge.registry import get_method
    return get_method("task_arithmetic").merge_tensor(
        jnp.zeros_like(ts[0]), ts, model_params={"weight": [float(w) for w in weights]},
        name=path)
  if kind not in records.PEFT_MERGES:
    raise ValueError(f"merge function {kind!r} unknown; valid: linear, "
                     f"{', '.join(records.PEFT_MERGES)}")
  if density is None:
    raise ValueError(f"combination {kind!r} needs density=")
  rec = records.PEFT_MERGES[kind]
  cfg = records.PeftMergeConfig(weights=tuple(float(w) for w in weights), density=float(density),
                                majority_sign_method=majority_sign_method)
  opts = {"masks": tuple(masks)} if masks is not None and "dare" in kind else None
  return rec(None, ts, config=cfg, key=key, path=path, options=opts)


def _key(key, path: str):
  if key is None:
    return None
  from jaxparams.transform import tensor_key
  return tensor_key(key, path)


def combine(adapters: Sequence[Any], weights: Sequence[float], combination_type: str = "svd", *,
            svd_rank: int | None = None, svd_clamp: float | None = None,
            density: float | None = None, majority_sign_method: str = "total",
            key: jax.Array | None = None, masks: dict | None = None) -> dict:
  """Combines adapter trees into one (see the module docstring for the types).

  Args:
    adapters: adapter trees (modules missing from some adapters are combined from the others).
    weights: one weight per adapter (negative allowed).
    combination_type: one of :data:`COMBINATION_TYPES`.
    svd_rank: rank of the ``*svd`` types (default: the largest input rank of the module).
    svd_clamp: quantile in (0, 1] for PEFT's clamp of the SVD factors.
    density: for the pruning types.
    majority_sign_method: ``'total'`` or ``'frequency'``.
    key: PRNG key for DARE (one key per module via ``tensor_key(key, path)``).
    masks: explicit DARE masks ``{path: {'a': [m_1, ...], 'b': [...]}}`` for the A/B types or
      ``{path: [m_1, ...]}`` for ``*_svd`` (Flax orientation), e.g. to reproduce PEFT's draw.
  """
  if combination_type not in COMBINATION_TYPES:
    raise ValueError(f"combination_type {combination_type!r} unknown; valid: "
                     f"{list(COMBINATION_TYPES)}")
  if len(adapters) != len(weights) or not adapters:
    raise ValueError(f"need one weight per adapter: {len(adapters)} adapters, {len(weights)} "
                     "weights")
  if len(adapters) == 1 and combination_type != "linear":
    combination_type = "peft_linear"  # PEFT: a single adapter always goes through 'linear'
  if "dare" in combination_type and key is None and masks is None:
    raise ValueError(f"{combination_type!r} is random: pass key= (or masks=)")
  ents = [entries(a) for a in adapters]
  paths = list(dict.fromkeys(p for e in ents for p in e))
  out = {}
  for path in paths:
    present = [(e[path], float(w)) for e, w in zip(ents, weights) if path in e]
    for e, _ in present:
      if "magnitude" in e or "bias" in e:
        raise ValueError(f"combine: module {path!r} has DoRA magnitudes or a lora bias; PEFT "
                         "combines these incorrectly and so do we not: merge them instead")
    mods = [e for e, _ in present]
    ws = [w for _, w in present]
    scales = [jnp.asarray(e["scale"], jnp.float32) for e in mods]
    pm = (masks or {}).get(path)
    if combination_type in ("linear", "cat"):
      a = jnp.concatenate([w * s * e["a"].astype(jnp.float32) for e, w, s in zip(mods, ws, scales)],
                          axis=1)
      b = jnp.concatenate([e["b"].astype(jnp.float32) for e in mods], axis=0)
    elif combination_type in _AB_TYPES:
      ranks = {e["a"].shape[1] for e in mods}
      if len(ranks) != 1:
        raise ValueError(f"combination {combination_type!r} needs equal ranks; module {path!r} "
                         f"has ranks {sorted(ranks)} (use 'cat', 'linear' or 'svd')")
      ws_ = [w * float(s) for w, s in zip(ws, scales)]
      wa = [math.copysign(math.sqrt(abs(x)), x if x != 0 else 1.0) for x in ws_]
      wb = [math.sqrt(abs(x)) for x in ws_]
      kind = "linear" if combination_type == "peft_linear" else combination_type
      a = merge_tensors(kind, [e["a"] for e in mods], wa, density=density,
                        majority_sign_method=majority_sign_method, key=_key(key, path + "/a"),
                        masks=None if pm is None else pm["a"], path=path + "/a")
      b = merge_tensors(kind, [e["b"] for e in mods], wb, density=density,
                        majority_sign_method=majority_sign_method, key=_key(key, path + "/b"),
                        masks=None if pm is None else pm["b"], path=path + "/b")
    else:
      kind = {"svd": "linear"}.get(combination_type, combination_type[:-4])
      deltas = [s * (e["a"].astype(jnp.float32) @ e["b"].astype(jnp.float32))
                for e, s in zip(mods, scales)]
      d = merge_tensors(kind, deltas, ws, density=density,
                        majority_sign_method=majority_sign_method, key=_key(key, path),
                        masks=pm, path=path)
      r = svd_rank or max(e["a"].shape[1] for e in mods)
      a, b = _svd_split(d, r, svd_clamp)
    out[path] = {"a": a, "b": b, "scale": jnp.float32(1.0)}
  return _from_entries(out)


def _svd_split(delta: jax.Array, rank: int, clamp: float | None):
  """PEFT's split of the torch-orientation delta: ``B = U_r S_r``, ``A = Vh_r``; Flax a, b."""
  u, s, vh = jnp.linalg.svd(delta.T, full_matrices=False)  # torch orientation [out, in]
  u = u[:, :rank] * s[:rank]
  vh = vh[:rank]
  if clamp is not None:
    hi = jnp.quantile(jnp.concatenate([u.ravel(), vh.ravel()]), clamp)
    u, vh = jnp.clip(u, -hi, hi), jnp.clip(vh, -hi, hi)
  return vh.T, u.T  # a = A.T [in, r], b = B.T [r, out]
