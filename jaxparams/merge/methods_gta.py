"""Task-vector methods (mergekit's ``GeneralizedTaskArithmeticMerge`` family).

``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``, ``breadcrumbs``,
``breadcrumbs_ties``, ``della``, ``della_linear``: sparsify each task vector
``tau_i = model_i - base`` (magnitude top-k, random, magnitude window, DELLA),
optionally rescale (mergekit: match the tensor's L1 norm), weight, optionally
elect signs (TIES), then ``base + lambda * merged``. The heavy lifting is in
:mod:`jaxparams.kernels.merge_sparsify` (top-k by threshold search, no sort).

mergekit semantics kept: per-tensor trimming with ``k = max(1, int(density * n))``;
the sign is elected on the *weighted* sum; disjoint weighted mean divided by
the selected weights; L1 rescaling; ``density`` defaults to 1.0; defaults of
``normalize``/``rescale`` per method as in mergekit 0.1.5. Differences: math is
always float32 (mergekit computes in the input dtype, e.g. bf16); exactly k
values are kept as in mergekit, but ties at the top-k threshold are taken
lowest flat index first (mergekit's unstable argsort takes an arbitrary
subset, so masks can differ on exactly tied magnitudes, which are common in
quantized deltas); random
masks come from an explicit key (counter-based hash), not torch's RNG.

Paper variants (explicit options): ``rescale='inverse'`` divides kept values
by their keep probability (DARE's 1/(1-p), DELLA's 1/p per element) instead of
L1 matching; the tree API's ``trim_scope='model'`` trims TIES over the whole
flattened model as in the TIES paper.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxparams.merge.registry import get_method
  >>> base = jnp.zeros(4)
  >>> m1, m2 = jnp.array([1., -2., 3., 0.1]), jnp.array([1.5, 2., -1., 0.1])
  >>> get_method('ties').merge_tensor(base, [m1, m2], model_params={'weight': [1., 1.],
  ...     'density': [0.5, 0.5]}).tolist()
  [1.5, 2.0, 3.0, 0.0]
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.kernels.merge_sparsify import api as kapi
from jaxparams.kernels.merge_sparsify.reference import KEY_MAX, della_probabilities
from jaxparams.merge.registry import REQUIRED, MergeMethod

__all__ = ["GTAConfig", "gta_compute", "window_counts", "METHODS"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GTAConfig:
  """Static configuration of one GTA merge (hashable, static under jit)."""

  sparsify: str | None  # None, 'magnitude', 'random', 'magnitude_outliers', 'della_magprune'
  consensus: bool
  normalize: bool
  rescale: str | None  # None, 'l1', 'inverse'
  search_lo: bool = True
  search_hi: bool = False
  given_lo: bool = False
  implementation: str | None = None


def _is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer) or (
      _seq(x) and any(isinstance(v, jax.core.Tracer) for v in x))


def _seq(x: Any) -> bool:
  return isinstance(x, (list, tuple))


def window_counts(kind: str | None, density: float, gamma: float, n: int) -> tuple[int, int]:
  """(k_hi, k_lo): keep the top ``k_hi`` magnitudes minus the top ``k_lo``.

  Mirrors mergekit: ``magnitude`` keeps ``max(1, int(d*n))`` (all for d >= 1,
  none for d <= 0); ``magnitude_outliers`` keeps ascending ranks
  ``[n_bot, n_bot + int(d*n))`` with ``n_bot = max(0, n - int(d*n) - int(g*n))``.

  Example:
    >>> window_counts('magnitude', 0.7, 0.0, 10), window_counts('magnitude_outliers', 0.5, 0.1, 10)
    ((7, 0), (6, 1))
  """
  if kind == "magnitude":
    if density >= 1:
      return n, 0
    if density <= 0 or n == 0:
      return 0, 0
    return max(1, int(density * n)), 0
  if kind == "magnitude_outliers":
    if density >= 1:
      return n, 0
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    return n - n_bot, n - n_bot - target
  return n, 0


def _window_counts_traced(kind, density, gamma, n):
  # Same as window_counts for traced densities: float32 product with a tiny
  # upward nudge so exact products (0.7 * 10) do not round down.
  d = jnp.asarray(density, jnp.float32)
  g = jnp.asarray(gamma, jnp.float32)
  fl = lambda v: jnp.floor(v * n * (1 + 2.0 ** -21)).astype(jnp.int32)
  if kind == "magnitude":
    k = jnp.maximum(1, fl(d))
    k = jnp.where(d >= 1, n, jnp.where(d <= 0, 0, k))
    return k, jnp.zeros_like(k)
  if kind == "magnitude_outliers":
    target, n_top = fl(d), fl(g)
    n_bot = jnp.maximum(0, n - target - n_top)
    k_hi = jnp.where(d >= 1, n, n - n_bot)
    k_lo = jnp.where(d >= 1, 0, n - n_bot - target)
    return k_hi, k_lo
  k = jnp.full(jnp.shape(d), n, jnp.int32)
  return k, jnp.zeros_like(k)


def _cuts(deltas, ks, implementation):
  # Exact top-k per model: (threshold key, tie cut) so exactly k are kept.
  stacked = jnp.stack([jnp.ravel(d) for d in deltas])
  return kapi.topk_cuts(stacked, jnp.maximum(ks, 1), implementation=implementation)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _gta_core(base, models, weights, lam, k_hi, k_lo, density, epsilon, lo_given, key, cfg):
  n = base.size
  n_models = len(models)
  deltas = [m.astype(jnp.float32) - base.astype(jnp.float32) for m in models]
  lo = jnp.zeros((n_models,), jnp.uint32)
  lo_cut = jnp.full((n_models,), KEY_MAX, jnp.uint32)
  hi = jnp.full((n_models,), KEY_MAX, jnp.uint32)
  hi_cut = jnp.zeros((n_models,), jnp.uint32)
  if cfg.given_lo:
    lo = lo_given  # whole-model trim: all ties at the global threshold kept
  elif cfg.search_lo:
    lo, lo_cut = _cuts(deltas, k_hi, cfg.implementation)
    lo = jnp.where(k_hi >= n, jnp.uint32(0), jnp.where(k_hi <= 0, KEY_MAX, lo))
    lo_cut = jnp.where(k_hi >= n, KEY_MAX, lo_cut)
  if cfg.search_hi:
    hi, hi_cut = _cuts(deltas, k_lo, cfg.implementation)
    hi = jnp.where(k_lo <= 0, KEY_MAX, hi)
  p = seeds = None
  if cfg.sparsify == "random":
    p = density.astype(jnp.float32)
  elif cfg.sparsify == "della_magprune":
    p = jnp.stack([della_probabilities(jax.lax.stop_gradient(deltas[i]), density[i], epsilon[i])
                   for i in range(n_models)])
  if p is not None:
    seeds = (jax.random.bits(key, (n_models,), jnp.uint32) if key is not None
             else jnp.zeros((n_models,), jnp.uint32))
  out = kapi.sparsify_merge(base, list(models), weights=weights, lo=lo, hi=hi, lo_cut=lo_cut,
                            hi_cut=hi_cut, lam=lam, p=p,
                            seeds=seeds, rescale=cfg.rescale, consensus=cfg.consensus,
                            normalize=cfg.normalize, implementation=cfg.implementation)
  return out.astype(base.dtype)


def _rescale_mode(value: Any) -> str | None:
  if value is True or value == "l1":
    return "l1"
  if value is False or value is None:
    return None
  if value == "inverse":
    return "inverse"
  raise ValueError(f"rescale must be true/false, 'l1' or 'inverse', got {value!r}")


def _as_f32(values: Any) -> jax.Array:
  if _seq(values):
    if any(isinstance(v, jax.core.Tracer) or isinstance(v, jax.Array) for v in values):
      return jnp.stack([jnp.asarray(v, jnp.float32) for v in values])
    return jnp.asarray(np.asarray(values, np.float32))
  return jnp.asarray(values, jnp.float32)


def gta_compute(spec: "_GTASpec", base: jax.Array, models: Sequence[jax.Array],
                mp: Mapping[str, Any], gp: Mapping[str, Any], key: jax.Array | None, *,
                lo: jax.Array | None = None, implementation: str | None = None) -> jax.Array:
  """Runs one GTA merge on one tensor (parameters already resolved)."""
  if not models:
    return base
  n = int(np.prod(np.shape(base)))
  n_models = len(models)
  kind = spec.sparsify
  dens = mp.get("density", [1.0] * n_models)
  gam = mp.get("gamma", [0.0] * n_models)
  eps = mp.get("epsilon", [0.0] * n_models)
  if _is_traced(dens) or _is_traced(gam):
    k_hi, k_lo = _window_counts_traced(kind, _as_f32(dens), _as_f32(gam), n)
    search_lo = kind in ("magnitude", "magnitude_outliers")
    search_hi = kind == "magnitude_outliers"
  else:
    ks = [window_counts(kind, float(d), float(g), n) for d, g in zip(dens, gam)]
    k_hi = jnp.asarray([k[0] for k in ks], jnp.int32)
    k_lo = jnp.asarray([k[1] for k in ks], jnp.int32)
    search_lo = any(0 < k[0] < n for k in ks)
    search_hi = any(k[1] > 0 for k in ks)
  rescale = _rescale_mode(gp.get("rescale", False))
  cfg = GTAConfig(sparsify=kind, consensus=spec.consensus, normalize=bool(gp["normalize"]),
                  rescale=rescale, search_lo=search_lo, search_hi=search_hi,
                  given_lo=lo is not None, implementation=implementation)
  return _gta_core(jnp.asarray(base), tuple(jnp.asarray(m) for m in models),
                   _as_f32(mp["weight"]), jnp.asarray(gp["lambda"], jnp.float32), k_hi, k_lo,
                   _as_f32(dens), _as_f32(eps), lo, key, cfg)


@dataclasses.dataclass(frozen=True)
class _GTASpec:
  name: str
  sparsify: str | None
  consensus: bool
  normalize: bool
  rescale: bool
  description: str


def _check(spec: _GTASpec):
  def check(n_models: int, mp, gp, name: str) -> None:
    where = f" (tensor {name!r})" if name else ""
    mode = _rescale_mode(gp.get("rescale"))
    if mode == "inverse" and spec.sparsify not in ("random", "della_magprune"):
      raise ValueError(f"merge method {spec.name!r}: rescale='inverse' needs a random "
                       f"sparsifier (dare_*, della*){where}")
    if spec.sparsify == "della_magprune":
      for i, (d, e) in enumerate(zip(mp["density"], mp["epsilon"])):
        d, e = float(d), float(e)
        if 0 < d < 1 and (d + e >= 1 or d - e <= 0):
          raise ValueError(
              f"merge method {spec.name!r}: model {i} has density={d} and epsilon={e}; "
              f"epsilon must be chosen such that density +/- epsilon is in (0, 1){where}")
    for pname in ("density", "gamma", "epsilon", "weight"):
      for i, v in enumerate(mp.get(pname, [])):
        if not np.isfinite(float(v)):
          raise ValueError(f"merge method {spec.name!r}: model {i} has {pname}={v}{where}")
    if not math.isfinite(float(gp["lambda"])):
      raise ValueError(f"merge method {spec.name!r}: lambda={gp['lambda']}{where}")
  return check


_SPECS = (
    _GTASpec("task_arithmetic", None, False, False, False,
             "base + lambda * sum w_i (m_i - base)"),
    _GTASpec("ties", "magnitude", True, True, False,
             "TIES: per-tensor magnitude trim, weighted sign election, disjoint mean"),
    _GTASpec("dare_ties", "random", True, False, True, "DARE random drop + L1 rescale, TIES"),
    _GTASpec("dare_linear", "random", False, False, True, "DARE random drop + L1 rescale"),
    _GTASpec("breadcrumbs", "magnitude_outliers", False, False, False,
             "Model Breadcrumbs: drop the smallest and the gamma largest"),
    _GTASpec("breadcrumbs_ties", "magnitude_outliers", True, False, False,
             "Model Breadcrumbs with TIES sign election"),
    _GTASpec("della", "della_magprune", True, True, True,
             "DELLA: rank-dependent random drop per row, L1 rescale, TIES"),
    _GTASpec("della_linear", "della_magprune", False, False, True,
             "DELLA without sign election"),
)


def _make(spec: _GTASpec) -> MergeMethod:
  model_params: dict[str, Any] = {"weight": REQUIRED, "density": 1.0}
  if spec.sparsify == "magnitude_outliers":
    model_params["gamma"] = 0.01
  if spec.sparsify == "della_magprune":
    model_params["epsilon"] = 0.15
  global_params = {"int8_mask": False, "normalize": spec.normalize, "rescale": spec.rescale,
                   "lambda": 1.0}
  return MergeMethod(
      name=spec.name, needs_base=True, model_params=model_params, global_params=global_params,
      random=spec.sparsify in ("random", "della_magprune"), base_policy="required",
      min_models=0, description=spec.description,
      compute=functools.partial(gta_compute, spec), check=_check(spec))


METHODS = tuple(_make(s) for s in _SPECS)
SPECS = {s.name: s for s in _SPECS}
