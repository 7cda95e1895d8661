"""Tree API: every merge method on in-memory parameter pytrees.

One function per mergekit method, each mapping the registry's per-tensor
function over the leaves. They are pure and traceable: wrap them in
``jax.jit``, ``jax.vmap`` over a batch of weight vectors (weights are arrays),
or ``jax.grad`` w.r.t. continuous coefficients (linear, task_arithmetic,
slerp, ties/dare with their masks held fixed). Sharded leaves give sharded
results (the math is element-wise plus reductions, partitioned by XLA).

Conventions: per-model parameters take a scalar (same for all models) or a
sequence/array with one value per model; ``lam`` is mergekit's ``lambda``;
``weights`` default to 1.0 per model where mergekit requires them;
``where=`` (a :mod:`jaxparams.tree` selector) merges only the chosen leaves,
the others are taken from the base (or the first model when there is none).
Random methods need ``key``; each leaf uses ``tensor_key(key, path)``, the
same per-tensor key the streaming driver uses, so both drivers agree.

Example:
  >>> import jax, jax.numpy as jnp
  >>> base = {'w': jnp.zeros(3)}
  >>> a, b = {'w': jnp.array([1., 2., 3.])}, {'w': jnp.array([3., 2., 1.])}
  >>> grid = jax.vmap(lambda w: task_arithmetic(base, [a, b], weights=w))(
  ...     jnp.array([[1., 0.], [0.5, 0.5]]))
  >>> grid['w'].tolist()
  [[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree
from jaxparams.kernels.merge_sparsify import api as kapi
from jaxparams.merge import methods_gta
from jaxparams.merge.registry import get_method, tensor_key

__all__ = [
    "merge_trees", "linear", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties",
    "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce",
    "ram", "ramplus_tl", "model_stock", "nearswap", "arcee_fusion", "passthrough",
]

PyTree = Any


def _traced(x: Any) -> bool:
  if isinstance(x, jax.core.Tracer):
    return True
  if isinstance(x, (list, tuple)):
    return any(_traced(v) for v in x)
  if isinstance(x, Mapping):
    return any(_traced(v) for v in x.values())
  return False


def merge_trees(method: str, base: PyTree | None, models: Sequence[PyTree], *,
                model_params: Mapping[str, Any] | None = None,
                global_params: Mapping[str, Any] | None = None, key: jax.Array | None = None,
                where: jtree.Selector = None, implementation: str | None = None,
                trim_scope: str = "tensor") -> PyTree:
  """Merges pytrees with the registry method ``method`` (mergekit names/params).

  Args:
    method: a name from :func:`jaxparams.merge.method_names`.
    base: base pytree or ``None``.
    models: the other models' pytrees (same structure and leaf shapes).
    model_params: per-model parameters (scalar or one value per model).
    global_params: global parameters.
    key: PRNG key for random methods.
    where: selector of the leaves to merge (others come from base/first model).
    implementation: kernel implementation of the task-vector family
      (``None``/``'xla'``/``'pallas'``).
    trim_scope: ``'tensor'`` (mergekit) or ``'model'``: for ``ties``, the
      top-k magnitude trim over each model's whole task vector (TIES paper).

  Returns:
    The merged pytree (structure of ``base``, or of the first model).

  Raises:
    ValueError: bad method/parameters, different tree structures or shapes
      (naming the leaf path and the model).

  Example:
    >>> import jax.numpy as jnp
    >>> merge_trees('linear', None, [{'w': jnp.ones(2)}, {'w': jnp.zeros(2)}],
    ...             model_params={'weight': [1., 3.]})['w'].tolist()
    [0.25, 0.25]
  """
  m = get_method(method)
  models = list(models)
  if m.base_policy == "ignored":
    base = None
  m.validate_inputs(base, models)
  mp, gp = m.resolve_params(len(models), model_params, global_params)
  if m.check is not None and not _traced(mp) and not _traced(gp):
    m.check(len(models), mp, gp, "")
  if m.random and key is None and not _traced(mp) and any(
      float(d) < 1 for d in mp.get("density", [])):
    raise ValueError(f"merge method {method!r} is random: pass key=jax.random.key(seed)")
  if trim_scope not in ("tensor", "model"):
    raise ValueError(f"trim_scope must be 'tensor' or 'model', got {trim_scope!r}")
  if trim_scope == "model" and method != "ties":
    raise ValueError(f"trim_scope='model' is only defined for 'ties', not {method!r}")

  ref_tree = base if base is not None else models[0]
  flat_ref = jtree.flatten(ref_tree)
  labels = (["base"] if base is not None else []) + [f"model {i}" for i in range(len(models))]
  flats = ([flat_ref] if base is not None else []) + [jtree.flatten(t) for t in models]
  for label, f in zip(labels, flats):
    missing, extra = sorted(set(flat_ref) - set(f)), sorted(set(f) - set(flat_ref))
    if missing or extra:
      raise ValueError(f"{label} has different leaves than {labels[0]}: missing {missing[:5]}, "
                       f"extra {extra[:5]}")
    for p, x in f.items():
      if np.shape(x) != np.shape(flat_ref[p]):
        raise ValueError(f"tensor {p!r}: shape {np.shape(x)} in {label} but "
                         f"{np.shape(flat_ref[p])} in {labels[0]}")
  chosen = jtree.select(flat_ref, where, flat=True) if where is not None else list(flat_ref)
  model_flats = flats[1:] if base is not None else flats
  flat_base = flat_ref if base is not None else None

  spec = methods_gta.SPECS.get(method)
  lo = None
  if trim_scope == "model":
    lo = _model_thresholds(flat_base, model_flats, chosen, mp["density"], implementation)

  out = dict(flat_ref)
  for p in chosen:
    b = flat_base[p] if flat_base is not None else None
    xs = [f[p] for f in model_flats]
    k = tensor_key(key, p) if key is not None else None
    if spec is not None:
      out[p] = methods_gta.gta_compute(spec, b, xs, mp, gp, k, lo=lo,
                                       implementation=implementation)
    else:
      out[p] = m.compute(b, xs, mp, gp, k)
  return jtree.unflatten(out, like=ref_tree)


def _model_thresholds(flat_base, model_flats, chosen, densities, implementation):
  total = int(sum(int(np.prod(np.shape(flat_base[p]))) for p in chosen))
  los = []
  for i, f in enumerate(model_flats):
    deltas = [jnp.asarray(f[p], jnp.float32) - jnp.asarray(flat_base[p], jnp.float32)
              for p in chosen]
    d = densities[i]
    if _traced(d):
      k = jnp.maximum(1, jnp.floor(jnp.asarray(d, jnp.float32) * total).astype(jnp.int32))
      thr = kapi.topk_threshold(deltas, k, implementation=implementation)
      los.append(jnp.where(d >= 1, jnp.uint32(0), jnp.where(d <= 0, kapi.KEY_MAX, thr)))
    else:
      k_hi, _ = methods_gta.window_counts("magnitude", float(d), 0.0, total)
      if k_hi >= total:
        los.append(jnp.uint32(0))
      elif k_hi <= 0:
        los.append(jnp.asarray(kapi.KEY_MAX))
      else:
        los.append(kapi.topk_threshold(deltas, k_hi, implementation=implementation))
  return jnp.stack([jnp.asarray(x, jnp.uint32) for x in los])


def _ones(models, weights):
  return [1.0] * len(models) if weights is None else weights


def _as_list(models):
  return list(models) if isinstance(models, (list, tuple)) else [models]


# -- one function per method -------------------------------------------------------------------

def linear(models: Sequence[PyTree], weights: Any = None, *, normalize: bool = True,
           where: jtree.Selector = None) -> PyTree:
  """Weighted average ``sum w_i m_i / sum w_i`` (model soup; FedAvg with
  ``weights`` = client sample counts). Equal weights by default.

  Example:
    >>> import jax.numpy as jnp
    >>> linear([{'w': jnp.ones(2)}, {'w': jnp.zeros(2)}])['w'].tolist()
    [0.5, 0.5]
  """
  models = _as_list(models)
  return merge_trees("linear", None, models, model_params={"weight": _ones(models, weights)},
                     global_params={"normalize": normalize}, where=where)


def slerp(base: PyTree, other: PyTree | Sequence[PyTree], t: Any, *,
          where: jtree.Selector = None) -> PyTree:
  """Per-tensor SLERP from ``base`` (t=0) to ``other`` (t=1); lerp if |cos| > 0.9995."""
  return merge_trees("slerp", base, _as_list(other), global_params={"t": t}, where=where)


def nuslerp(base: PyTree | None, models: Sequence[PyTree], *, weights: Any = None,
            nuslerp_flatten: bool = True, nuslerp_row_wise: bool = False,
            where: jtree.Selector = None) -> PyTree:
  """SLERP of two models (task vectors if ``base``) at t = w1 / (w0 + w1)."""
  models = _as_list(models)
  return merge_trees("nuslerp", base, models, model_params={"weight": _ones(models, weights)},
                     global_params={"nuslerp_flatten": nuslerp_flatten,
                                    "nuslerp_row_wise": nuslerp_row_wise}, where=where)


def multislerp(base: PyTree | None, models: Sequence[PyTree], *, weights: Any = None,
               normalize_weights: bool = True, eps: float = 1e-8,
               where: jtree.Selector = None) -> PyTree:
  """Barycentric SLERP of several models (of task vectors if ``base``)."""
  models = _as_list(models)
  return merge_trees("multislerp", base, models, model_params={"weight": _ones(models, weights)},
                     global_params={"normalize_weights": normalize_weights, "eps": eps},
                     where=where)


def karcher(models: Sequence[PyTree], *, max_iter: int = 10, tol: float = 1e-5,
            where: jtree.Selector = None) -> PyTree:
  """Karcher mean on the sphere, scaled by the mean norm (equal weights)."""
  return merge_trees("karcher", None, _as_list(models),
                     global_params={"max_iter": max_iter, "tol": tol}, where=where)


def _gta(name, base, models, weights, key, where, implementation, trim_scope="tensor", **params):
  models = _as_list(models)
  mp = {"weight": _ones(models, weights)}
  for k in ("density", "gamma", "epsilon"):
    if k in params:
      mp[k] = params.pop(k)
  gp = {("lambda" if k == "lam" else k): v for k, v in params.items()}
  return merge_trees(name, base, models, model_params=mp, global_params=gp, key=key, where=where,
                     implementation=implementation, trim_scope=trim_scope)


def task_arithmetic(base: PyTree, models: Sequence[PyTree], *, weights: Any = None,
                    lam: Any = 1.0, normalize: bool = False, where: jtree.Selector = None,
                    implementation: str | None = None) -> PyTree:
  """``base + lam * sum w_i (m_i - base)`` (divided by ``sum w`` if normalize).

  Negative weights subtract a task ("forgetting by negation")."""
  return _gta("task_arithmetic", base, models, weights, None, where, implementation, lam=lam,
              normalize=normalize)


def ties(base: PyTree, models: Sequence[PyTree], *, weights: Any = None, density: Any = 1.0,
         lam: Any = 1.0, normalize: bool = True, rescale: bool | str = False,
         trim_scope: str = "tensor", key: jax.Array | None = None,
         where: jtree.Selector = None, implementation: str | None = None) -> PyTree:
  """TIES: keep the top ``density`` fraction of each task vector by magnitude
  (per tensor as mergekit, or ``trim_scope='model'`` as the paper), elect the
  sign on the weighted sum, average the agreeing values (weighted).

  Example:
    >>> import jax.numpy as jnp
    >>> base = {'w': jnp.zeros(3)}
    >>> out = ties(base, [{'w': jnp.array([1., -2., .1])}, {'w': jnp.array([1., 1., .1])}],
    ...            density=2 / 3)
    >>> out['w'].tolist()
    [1.0, -2.0, 0.0]
  """
  del key  # deterministic; accepted for a uniform signature
  return _gta("ties", base, models, weights, None, where, implementation, trim_scope,
              density=density, lam=lam, normalize=normalize, rescale=rescale)


def dare_linear(base: PyTree, models: Sequence[PyTree], *, weights: Any = None,
                density: Any = 1.0, lam: Any = 1.0, normalize: bool = False,
                rescale: bool | str = True, key: jax.Array | None = None,
                where: jtree.Selector = None, implementation: str | None = None) -> PyTree:
  """DARE: drop each delta with probability ``1 - density`` and rescale (L1 as
  mergekit; ``rescale='inverse'`` for the paper's 1/(1-p)). Needs ``key``."""
  return _gta("dare_linear", base, models, weights, key, where, implementation, density=density,
              lam=lam, normalize=normalize, rescale=rescale)


def dare_ties(base: PyTree, models: Sequence[PyTree], *, weights: Any = None, density: Any = 1.0,
              lam: Any = 1.0, normalize: bool = False, rescale: bool | str = True,
              key: jax.Array | None = None, where: jtree.Selector = None,
              implementation: str | None = None) -> PyTree:
  """DARE sparsification followed by TIES sign election. Needs ``key``."""
  return _gta("dare_ties", base, models, weights, key, where, implementation, density=density,
              lam=lam, normalize=normalize, rescale=rescale)


def breadcrumbs(base: PyTree, models: Sequence[PyTree], *, weights: Any = None,
                density: Any = 1.0, gamma: Any = 0.01, lam: Any = 1.0, normalize: bool = False,
                rescale: bool = False, where: jtree.Selector = None,
                implementation: str | None = None) -> PyTree:
  """Model Breadcrumbs: drop the ``gamma`` largest and the smallest deltas."""
  return _gta("breadcrumbs", base, models, weights, None, where, implementation,
              density=density, gamma=gamma, lam=lam, normalize=normalize, rescale=rescale)


def breadcrumbs_ties(base: PyTree, models: Sequence[PyTree], *, weights: Any = None,
                     density: Any = 1.0, gamma: Any = 0.01, lam: Any = 1.0,
                     normalize: bool = False, rescale: bool = False,
                     where: jtree.Selector = None, implementation: str | None = None) -> PyTree:
  """Model Breadcrumbs with TIES sign election."""
  return _gta("breadcrumbs_ties", base, models, weights, None, where, implementation,
              density=density, gamma=gamma, lam=lam, normalize=normalize, rescale=rescale)


def della(base: PyTree, models: Sequence[PyTree], *, weights: Any = None, density: Any = 1.0,
          epsilon: Any = 0.15, lam: Any = 1.0, normalize: bool = True,
          rescale: bool | str = True, key: jax.Array | None = None,
          where: jtree.Selector = None, implementation: str | None = None) -> PyTree:
  """DELLA: per-row magnitude-ranked keep probabilities in
  ``[density - epsilon, density + epsilon]``, rescale, TIES. Needs ``key``."""
  return _gta("della", base, models, weights, key, where, implementation, density=density,
              epsilon=epsilon, lam=lam, normalize=normalize, rescale=rescale)


def della_linear(base: PyTree, models: Sequence[PyTree], *, weights: Any = None,
                 density: Any = 1.0, epsilon: Any = 0.15, lam: Any = 1.0,
                 normalize: bool = False, rescale: bool | str = True,
                 key: jax.Array | None = None, where: jtree.Selector = None,
                 implementation: str | None = None) -> PyTree:
  """DELLA without sign election. Needs ``key``."""
  return _gta("della_linear", base, models, weights, key, where, implementation,
              density=density, epsilon=epsilon, lam=lam, normalize=normalize, rescale=rescale)


def sce(base: PyTree, models: Sequence[PyTree], *, select_topk: float = 1.0,
        where: jtree.Selector = None) -> PyTree:
  """SCE: variance-based selection, calculated weights, sign-conflict erasure."""
  return merge_trees("sce", base, _as_list(models), global_params={"select_topk": select_topk},
                     where=where)


def ram(base: PyTree, models: Sequence[PyTree], *, epsilon: float = 1e-5,
        where: jtree.Selector = None) -> PyTree:
  """RAM: unique deltas kept, overlapping deltas averaged."""
  return merge_trees("ram", base, _as_list(models), global_params={"epsilon": epsilon},
                     where=where)


def ramplus_tl(base: PyTree, models: Sequence[PyTree], *, r: float = 0.1, alpha: float = 0.2,
               epsilon: float = 1e-5, where: jtree.Selector = None) -> PyTree:
  """RAM+ (tensor-local): unique deltas scaled up by the shared/unique ratio."""
  return merge_trees("ramplus_tl", base, _as_list(models),
                     global_params={"r": r, "alpha": alpha, "epsilon": epsilon}, where=where)


def model_stock(base: PyTree, models: Sequence[PyTree], *, filter_wise: bool = False,
                where: jtree.Selector = None) -> PyTree:
  """Model Stock (>= 2 fine-tuned models)."""
  return merge_trees("model_stock", base, _as_list(models),
                     global_params={"filter_wise": filter_wise}, where=where)


def nearswap(base: PyTree, other: PyTree | Sequence[PyTree], t: Any, *,
             where: jtree.Selector = None) -> PyTree:
  """NearSwap: take ``other``'s values that are within ``t`` of the base."""
  return merge_trees("nearswap", base, _as_list(other), global_params={"t": t}, where=where)


def arcee_fusion(base: PyTree, other: PyTree | Sequence[PyTree], *,
                 where: jtree.Selector = None) -> PyTree:
  """Arcee Fusion: keep the important part of ``other``'s delta."""
  return merge_trees("arcee_fusion", base, _as_list(other), where=where)


def passthrough(model: PyTree, scale: float | None = None, *,
                where: jtree.Selector = None) -> PyTree:
  """The model itself, optionally scaled (``scale``)."""
  return merge_trees("passthrough", None, [model], model_params={"scale": [scale]}, where=where)
