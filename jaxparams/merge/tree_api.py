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
from jaxparams.merge import methods_gta, methods_interp, methods_other
from jaxparams.merge.params import mergekit_params
from jaxparams.merge.registry import METHODS, get_method
from jaxparams.transform import apply_tree, check_same_leaves

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
                model_params: Mapping[str, Any] | None = None, global_params: Mapping[str,
                Any] | None = None, key: jax.Array | None = None, where: jtree.Selector = None,
                implementation: str | None = None, trim_scope: str = "tensor") -> PyTree:
  """Merges pytrees with the registry method ``method`` (mergekit names/params).

  Runs the method's record with the transform layer's tree driver
  (:func:`jaxparams.transform.apply_tree`): the record's checks (shapes,
  non-float leaves, parameter ranges, NaN/Inf) run for every merged leaf.

  Args:
    method: a name from :func:`jaxparams.merge.method_names`.
    base: base pytree or ``None``.
    models: the other models' pytrees (same structure and leaf shapes).
    model_params: per-model parameters (scalar or one value per model).
    global_params: global parameters.
    key: PRNG key for random methods.
    where: selector of the leaves to merge (others come from base/first model).
    implementation: kernel implementation of the task-vector family
      (``None``/``'xla'``/``'pallas'``), for records that take that option.
    trim_scope: ``'tensor'`` (mergekit) or ``'model'``: for methods with a
      magnitude trim (``ties``), the top-k over each model's whole task
      vector (TIES paper).

  Returns:
    The merged pytree (structure of ``base``, or of the first model).

  Raises:
    ValueError: bad method/parameters, different tree structures or shapes
      (naming the leaf path and the model), NaN/Inf (naming the leaf).

  Example:
    >>> import jax.numpy as jnp
    >>> merge_trees('linear', None, [{'w': jnp.ones(2)}, {'w': jnp.zeros(2)}],
    ...             model_params={'weight': [1., 3.]})['w'].tolist()
    [0.25, 0.25]
  """
  m = get_method(method)
  rec = m.record
  models = list(models)
  if not models:  # the streaming driver's base-only recipes keep mergekit's rule; here it is a slip
    raise ValueError(f"merge method {method!r}: no models to merge (models is empty); the "
                     "result would be the base unchanged. Pass at least one model.")
  if rec.base == "ignored":
    base = None
  m.validate_inputs(base, models)
  cfg = m.resolve_config(len(models), model_params, global_params)
  if trim_scope not in ("tensor", "model"):
    raise ValueError(f"trim_scope must be 'tensor' or 'model', got {trim_scope!r}")
  if trim_scope == "model" and not rec.info.get("model_trim"):
    able = [r.name for r in METHODS if r.info.get("model_trim")]
    raise ValueError(f"trim_scope='model' is only defined for "
                     f"{', '.join(repr(n) for n in able)}, not {method!r}")
  options = {"implementation": implementation} if "implementation" in rec.options else {}
  leaf_options = None
  if trim_scope == "model":
    labels = ["base"] + [f"model {i}" for i in range(len(models))]
    flats = [jtree.flatten(base)] + [jtree.flatten(t) for t in models]
    check_same_leaves(flats, labels)
    chosen = jtree.select(flats[0], where, flat=True) if where is not None else list(flats[0])
    mp, _ = mergekit_params(cfg, len(models))
    lo = _model_thresholds(flats[0], flats[1:], chosen, mp["density"], implementation)
    leaf_options = lambda _path: {"lo": lo}  # noqa: E731
  return apply_tree(rec, base, models, config=cfg, key=key, where=where, options=options,
                    leaf_options=leaf_options)


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


# Defaults of the wrappers below are read from the records' config classes (defined once there).
_LIN, _NUS = methods_interp.LinearConfig, methods_interp.NuslerpConfig
_MSL = methods_interp.MultislerpConfig
_KAR, _MST = methods_interp.KarcherConfig, methods_interp.ModelStockConfig
_TA, _TIES, _DARE = methods_gta.TaskArithmeticConfig, methods_gta.TiesConfig, methods_gta.DareConfig
_BC, _DEL = methods_gta.BreadcrumbsConfig, methods_gta.DellaConfig
_DELL = methods_gta.DellaLinearConfig
_SCE, _RAM, _RPL = methods_other.SceConfig, methods_other.RamConfig, methods_other.RamplusConfig


def _ones(models, weights):
  return [1.0] * len(models) if weights is None else weights


def _as_list(models):
  return list(models) if isinstance(models, (list, tuple)) else [models]


# -- one function per method -------------------------------------------------------------------

def linear(models: Sequence[PyTree], weights: Any = None, *, normalize: bool = _LIN.normalize,
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
            nuslerp_flatten: bool = _NUS.nuslerp_flatten,
            nuslerp_row_wise: bool = _NUS.nuslerp_row_wise, where: jtree.Selector = None) -> PyTree:
  """SLERP of two models (task vectors if ``base``) at t = w1 / (w0 + w1)."""
  models = _as_list(models)
  return merge_trees("nuslerp", base, models, model_params={"weight": _ones(models, weights)},
                     global_params={"nuslerp_flatten": nuslerp_flatten,
                                    "nuslerp_row_wise": nuslerp_row_wise}, where=where)


def multislerp(base: PyTree | None, models: Sequence[PyTree], *, weights: Any = None,
               normalize_weights: bool = _MSL.normalize_weights, eps: float = _MSL.eps,
               where: jtree.Selector = None) -> PyTree:
  """Barycentric SLERP of several models (of task vectors if ``base``)."""
  models = _as_list(models)
  return merge_trees("multislerp", base, models, model_params={"weight": _ones(models, weights)},
                     global_params={"normalize_weights": normalize_weights, "eps": eps},
                     where=where)


def karcher(models: Sequence[PyTree], *, max_iter: int = _KAR.max_iter, tol: float = _KAR.tol,
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
                    lam: Any = _TA.lam, normalize: bool = _TA.normalize,
                    where: jtree.Selector = None, implementation: str | None = None) -> PyTree:
  """``base + lam * sum w_i (m_i - base)`` (divided by ``sum w`` if normalize).

  Negative weights subtract a task ("forgetting by negation")."""
  return _gta("task_arithmetic", base, models, weights, None, where, implementation, lam=lam,
              normalize=normalize)


def ties(base: PyTree, models: Sequence[PyTree], *, weights: Any = None,
         density: Any = _TIES.density, lam: Any = _TIES.lam, normalize: bool = _TIES.normalize,
         rescale: bool | str = _TIES.rescale, trim_scope: str = "tensor",
         key: jax.Array | None = None, where: jtree.Selector = None,
         implementation: str | None = None) -> PyTree:
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
                density: Any = _DARE.density, lam: Any = _DARE.lam,
                normalize: bool = _DARE.normalize, rescale: bool | str = _DARE.rescale,
                key: jax.Array | None = None, where: jtree.Selector = None,
                implementation: str | None = None) -> PyTree:
  """DARE: drop each delta with probability ``1 - density`` and rescale (L1 as
  mergekit; ``rescale='inverse'`` for the paper's 1/(1-p)). Needs ``key``."""
  return _gta("dare_linear", base, models, weights, key, where, implementation, density=density,
              lam=lam, normalize=normalize, rescale=rescale)


def dare_ties(base: PyTree, models: Sequence[PyTree], *, weights: Any = None,
              density: Any = _DARE.density, lam: Any = _DARE.lam, normalize: bool = _DARE.normalize,
              rescale: bool | str = _DARE.rescale, key: jax.Array | None = None,
              where: jtree.Selector = None, implementation: str | None = None) -> PyTree:
  """DARE sparsification followed by TIES sign election. Needs ``key``."""
  return _gta("dare_ties", base, models, weights, key, where, implementation, density=density,
              lam=lam, normalize=normalize, rescale=rescale)


def breadcrumbs(base: PyTree, models: Sequence[PyTree], *, weights: Any = None,
                density: Any = _BC.density, gamma: Any = _BC.gamma, lam: Any = _BC.lam,
                normalize: bool = _BC.normalize, rescale: bool = _BC.rescale,
                where: jtree.Selector = None, implementation: str | None = None) -> PyTree:
  """Model Breadcrumbs: drop the ``gamma`` largest and the smallest deltas."""
  return _gta("breadcrumbs", base, models, weights, None, where, implementation,
              density=density, gamma=gamma, lam=lam, normalize=normalize, rescale=rescale)


def breadcrumbs_ties(base: PyTree, models: Sequence[PyTree], *, weights: Any = None,
                     density: Any = _BC.density, gamma: Any = _BC.gamma, lam: Any = _BC.lam,
                     normalize: bool = _BC.normalize, rescale: bool = _BC.rescale,
                     where: jtree.Selector = None, implementation: str | None = None) -> PyTree:
  """Model Breadcrumbs with TIES sign election."""
  return _gta("breadcrumbs_ties", base, models, weights, None, where, implementation,
              density=density, gamma=gamma, lam=lam, normalize=normalize, rescale=rescale)


def della(base: PyTree, models: Sequence[PyTree], *, weights: Any = None,
          density: Any = _DEL.density, epsilon: Any = _DEL.epsilon, lam: Any = _DEL.lam,
          normalize: bool = _DEL.normalize, rescale: bool | str = _DEL.rescale,
          key: jax.Array | None = None, where: jtree.Selector = None,
          implementation: str | None = None) -> PyTree:
  """DELLA: per-row magnitude-ranked keep probabilities in
  ``[density - epsilon, density + epsilon]``, rescale, TIES. Needs ``key``."""
  return _gta("della", base, models, weights, key, where, implementation, density=density,
              epsilon=epsilon, lam=lam, normalize=normalize, rescale=rescale)


def della_linear(base: PyTree, models: Sequence[PyTree], *, weights: Any = None,
                 density: Any = _DELL.density, epsilon: Any = _DELL.epsilon, lam: Any = _DELL.lam,
                 normalize: bool = _DELL.normalize, rescale: bool | str = _DELL.rescale,
                 key: jax.Array | None = None, where: jtree.Selector = None,
                 implementation: str | None = None) -> PyTree:
  """DELLA without sign election. Needs ``key``."""
  return _gta("della_linear", base, models, weights, key, where, implementation,
              density=density, epsilon=epsilon, lam=lam, normalize=normalize, rescale=rescale)


def sce(base: PyTree, models: Sequence[PyTree], *, select_topk: float = _SCE.select_topk,
        where: jtree.Selector = None) -> PyTree:
  """SCE: variance-based selection, calculated weights, sign-conflict erasure."""
  return merge_trees("sce", base, _as_list(models), global_params={"select_topk": select_topk},
                     where=where)


def ram(base: PyTree, models: Sequence[PyTree], *, epsilon: float = _RAM.epsilon,
        where: jtree.Selector = None) -> PyTree:
  """RAM: unique deltas kept, overlapping deltas averaged."""
  return merge_trees("ram", base, _as_list(models), global_params={"epsilon": epsilon},
                     where=where)


def ramplus_tl(base: PyTree, models: Sequence[PyTree], *, r: float = _RPL.r,
               alpha: float = _RPL.alpha, epsilon: float = _RPL.epsilon,
               where: jtree.Selector = None) -> PyTree:
  """RAM+ (tensor-local): unique deltas scaled up by the shared/unique ratio."""
  return merge_trees("ramplus_tl", base, _as_list(models),
                     global_params={"r": r, "alpha": alpha, "epsilon": epsilon}, where=where)


def model_stock(base: PyTree, models: Sequence[PyTree], *, filter_wise: bool = _MST.filter_wise,
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
