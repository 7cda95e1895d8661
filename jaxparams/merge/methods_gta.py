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
  >>> from jaxparams.merge import get_method
  >>> base = jnp.zeros(4)
  >>> m1, m2 = jnp.array([1., -2., 3., 0.1]), jnp.array([1.5, 2., -1., 0.1])
  >>> get_method('ties').merge_tensor(base, [m1, m2], model_params={'weight': [1., 1.],
  ...     'density': [0.5, 0.5]}).tolist()
  [1.5, 2.0, 3.0, 0.0]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.kernels.merge_sparsify import api as kapi
from jaxparams.kernels.merge_sparsify.reference import KEY_MAX, della_probabilities
from jaxparams.merge.params import global_param, model_param
from jaxparams.merge.record import merge_record
from jaxparams.transform import Check, CheckContext, in_range

__all__ = ["GTAConfig", "GTASpec", "gta_compute", "window_counts", "RECORDS", "SPECS"]


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


def _cuts(base, models, ks, implementation):
  # Exact top-k of |model - base| per model: (threshold key, tie cut) so exactly k are kept;
  # the differences are made chunk by chunk inside the search (no (N, n) float32 copies).
  return kapi.delta_topk_cuts(base, models, jnp.maximum(ks, 1), implementation=implementation)


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
    lo, lo_cut = _cuts(base, models, k_hi, cfg.implementation)
    lo = jnp.where(k_hi >= n, jnp.uint32(0), jnp.where(k_hi <= 0, KEY_MAX, lo))
    lo_cut = jnp.where(k_hi >= n, KEY_MAX, lo_cut)
  if cfg.search_hi:
    hi, hi_cut = _cuts(base, models, k_lo, cfg.implementation)
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


def gta_compute(spec: "GTASpec", base: jax.Array, models: Sequence[jax.Array],
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
    # k_hi == 0 (density <= 0) needs the threshold too: it keeps nothing (mergekit: zeros).
    search_lo = any(k[0] < n for k in ks)
    search_hi = any(k[1] > 0 for k in ks)
  rescale = _rescale_mode(gp.get("rescale", False))
  cfg = GTAConfig(sparsify=kind, consensus=spec.consensus, normalize=bool(gp["normalize"]),
                  rescale=rescale, search_lo=search_lo, search_hi=search_hi,
                  given_lo=lo is not None, implementation=implementation)
  return _gta_core(jnp.asarray(base), tuple(jnp.asarray(m) for m in models),
                   _as_f32(mp["weight"]), jnp.asarray(gp["lambda"], jnp.float32), k_hi, k_lo,
                   _as_f32(dens), _as_f32(eps), lo, key, cfg)


@dataclasses.dataclass(frozen=True)
class GTASpec:
  """What distinguishes the GTA methods: sparsifier and sign consensus."""
  name: str
  sparsify: str | None
  consensus: bool
  description: str


# -- configs: mergekit 0.1.5 parameters and defaults, once --------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskArithmeticConfig:
  """``task_arithmetic``: ``base + lambda * sum w_i tau_i`` (/ sum w if normalize)."""
  weight: tuple = model_param()
  density: tuple = model_param(1.0)
  int8_mask: bool = global_param(False)
  normalize: bool = global_param(False)
  rescale: bool | str = global_param(False)
  lam: float = global_param(1.0, name="lambda")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TiesConfig(TaskArithmeticConfig):
  """``ties``: magnitude trim to ``density``, sign election, disjoint mean."""
  normalize: bool = global_param(True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DareConfig(TaskArithmeticConfig):
  """``dare_ties`` / ``dare_linear``: random drop to ``density``, L1 rescale."""
  rescale: bool | str = global_param(True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BreadcrumbsConfig(TaskArithmeticConfig):
  """``breadcrumbs`` / ``breadcrumbs_ties``: drop the ``gamma`` largest and the smallest."""
  gamma: tuple = model_param(0.01)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DellaConfig(TaskArithmeticConfig):
  """``della``: magnitude-ranked keep probabilities in ``density +/- epsilon``, TIES."""
  epsilon: tuple = model_param(0.15)
  normalize: bool = global_param(True)
  rescale: bool | str = global_param(True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DellaLinearConfig(DellaConfig):
  """``della_linear``: DELLA without sign election (no normalisation)."""
  normalize: bool = global_param(False)


# -- checks ------------------------------------------------------------------------------------

def _concrete(v: Any) -> bool:
  return not isinstance(v, jax.core.Tracer)


def _per_model(ctx: CheckContext, field: str) -> list[Any]:
  v = getattr(ctx.config, field)
  return list(v) if isinstance(v, (list, tuple)) else [v] * max(ctx.n_models, 1)


def _rescale_check(spec: GTASpec) -> Check:
  def static(ctx: CheckContext) -> None:
    mode = _rescale_mode(ctx.config.rescale)
    if mode == "inverse" and spec.sparsify not in ("random", "della_magprune"):
      raise ValueError(f"merge method {spec.name!r}: rescale='inverse' needs a random "
                       f"sparsifier (dare_*, della*) ({ctx.where})")
  return Check("rescale_mode", static=static)


def _della_window(ctx: CheckContext) -> None:
  for i, (d, e) in enumerate(zip(_per_model(ctx, "density"), _per_model(ctx, "epsilon"))):
    if not (_concrete(d) and _concrete(e)):
      continue
    d, e = float(d), float(e)
    if 0 < d < 1 and (d + e >= 1 or d - e <= 0):
      raise ValueError(
          f"merge method {ctx.record!r}: model {i} has density={d} and epsilon={e}; "
          f"epsilon must be chosen such that density +/- epsilon is in (0, 1) ({ctx.where})")


_della_check = Check("della_window", static=_della_window)


def _checks(spec: GTASpec) -> tuple[Check, ...]:
  out = [_rescale_check(spec), in_range("weight"), in_range("density", 0.0, 1.0),
         in_range("lam", alias="lambda")]
  if spec.sparsify == "magnitude_outliers":
    out.append(in_range("gamma", 0.0, 1.0))
  if spec.sparsify == "della_magprune":
    out += [in_range("epsilon", 0.0, 1.0), _della_check]
  return tuple(out)


def _random_active(config: Any) -> bool:
  dens = config.density if isinstance(config.density, (list, tuple)) else [config.density]
  return any(float(d) < 1.0 for d in dens)


_SPECS = (
    (GTASpec("task_arithmetic", None, False, "base + lambda * sum w_i (m_i - base)"),
     TaskArithmeticConfig),
    (GTASpec("ties", "magnitude", True,
             "TIES: per-tensor magnitude trim, weighted sign election, disjoint mean"), TiesConfig),
    (GTASpec("dare_ties", "random", True, "DARE random drop + L1 rescale, TIES"), DareConfig),
    (GTASpec("dare_linear", "random", False, "DARE random drop + L1 rescale"), DareConfig),
    (GTASpec("breadcrumbs", "magnitude_outliers", False,
             "Model Breadcrumbs: drop the smallest and the gamma largest"), BreadcrumbsConfig),
    (GTASpec("breadcrumbs_ties", "magnitude_outliers", True,
             "Model Breadcrumbs with TIES sign election"), BreadcrumbsConfig),
    (GTASpec("della", "della_magprune", True,
             "DELLA: rank-dependent random drop per row, L1 rescale, TIES"), DellaConfig),
    (GTASpec("della_linear", "della_magprune", False, "DELLA without sign election"),
     DellaLinearConfig),
)


def _record(spec: GTASpec, config: type):
  return merge_record(
      spec.name, functools.partial(gta_compute, spec), config, base="required", min_models=0,
      needs_key=_random_active if spec.sparsify in ("random", "della_magprune") else False,
      checks=_checks(spec), options=("implementation", "lo"), description=spec.description,
      info={"sparsify": spec.sparsify, "consensus": spec.consensus,
            "model_trim": spec.sparsify == "magnitude"})


RECORDS = tuple(_record(s, c) for s, c in _SPECS)
SPECS = {s.name: s for s, _ in _SPECS}
