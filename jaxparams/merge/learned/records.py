"""RegMean and Fisher merging as transform records (per-tensor function + config + checks).

Both are data-aware: besides the models' tensors, each tensor's merge reads per-model
*statistics*. The per-tensor functions take them as trailing inputs, after the weights:

* ``regmean``: ``models = (W_1, ..., W_n, G_1, ..., G_n)`` with ``G_i = X_i^T X_i`` the Gram
  matrix of the layer's inputs on model ``i``'s data (:func:`jaxparams.calib.collect_stats`),
  ``W* = (sum_i G~_i)^-1 sum_i G~_i W_i``, ``G~_i = alpha G_i + (1 - alpha) diag(G_i)``
  (Jin et al., 2023). ``input_axis`` says which axis of ``W`` the Gram acts on (0 for a flax
  kernel ``[in, out]``, 1 for an HF Linear weight ``[out, in]``). The tree driver may pass the
  Grams as the option ``grams=`` instead (shapes differ from the weights', so they cannot be
  input trees); the streaming driver reads them as extra input tensors.
* ``fisher``: ``models = (theta_1, ..., theta_n, F_1, ..., F_n)`` with the diagonal Fishers
  (same shapes as the weights), ``theta* = sum_i w_i F_i theta_i / sum_i w_i F_i`` with every
  ``F`` floored at ``min_fisher`` (Matena & Raffel, 2022). Normalising each model's Fisher by
  its global norm is a property of the statistics, done where they are computed.

Leaves without statistics (biases, norms, embeddings) are averaged with the ``linear`` merge
record by both drivers (the papers' choice).

Example:
  >>> import jax.numpy as jnp
  >>> w = [jnp.eye(2), 3 * jnp.eye(2)]
  >>> g = [jnp.diag(jnp.array([1., 0.])), jnp.diag(jnp.array([0., 1.]))]
  >>> REGMEAN(None, w + g, {'alpha': 1.0, 'eps': 0.0}).tolist()
  [[1.0, 0.0], [0.0, 3.0]]
  >>> FISHER(None, [jnp.zeros(2), jnp.full(2, 4.), jnp.ones(2), jnp.full(2, 3.)]).tolist()
  [3.0, 3.0]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxparams.transform import Check, CheckContext, Registry, Transform, finite, float_inputs
from jaxparams.transform.checks import in_range, is_traced

__all__ = ["FISHER", "FisherConfig", "REGMEAN", "RECORDS", "RegMeanConfig", "fisher_tensor",
           "regmean_tensor"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegMeanConfig:
  """RegMean's parameters.

  Attributes:
    alpha: off-diagonal scaling of the Grams in ``[0, 1]`` (1 = exact regression, 0 = a
      diagonal-weighted average); FusionBench's ``reduce_non_diagonal_ratio`` 0.95.
    eps: ridge added to ``sum_i G~_i``, relative to its mean diagonal (singular Grams).
    input_axis: the axis of the weight the Gram acts on (0: ``[in, out]``; 1: ``[out, in]``).
  """
  alpha: float = 0.95
  eps: float = 1e-6
  input_axis: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class FisherConfig:
  """Fisher merging's parameters.

  Attributes:
    weight: one scalar per model (``None``: 1 each).
    min_fisher: floor of every Fisher entry (FusionBench's ``minimal_fisher_weight``), so
      entries no model informs fall back to the (weighted) average.
  """
  weight: Any = None
  min_fisher: float = 1e-6


def _split(models: Sequence[jax.Array]) -> tuple[list, list]:
  n = len(models) // 2
  return list(models[:n]), list(models[n:])


def regmean_tensor(base: Any, models: Sequence[jax.Array], config: RegMeanConfig, *,
                   grams: Sequence[jax.Array] | None = None) -> jax.Array:
  """RegMean of one weight (see the module docstring); output in the first weight's dtype."""
  del base
  ws, gs = (list(models), list(grams)) if grams is not None else _split(models)
  a = config.alpha
  g_t = []
  for g in gs:
    g = jnp.asarray(g, jnp.float32)
    g_t.append(a * g + (1.0 - a) * jnp.diag(jnp.diag(g)))
  gsum = sum(g_t)
  gsum = gsum + config.eps * jnp.mean(jnp.diag(gsum)) * jnp.eye(gsum.shape[0], dtype=jnp.float32)
  ax = config.input_axis
  as_in_out = [jnp.asarray(w, jnp.float32) if ax == 0 else jnp.asarray(w, jnp.float32).T
               for w in ws]
  out = jnp.linalg.solve(gsum, sum(g @ w for g, w in zip(g_t, as_in_out)))
  return (out if ax == 0 else out.T).astype(ws[0].dtype)


def fisher_tensor(base: Any, models: Sequence[jax.Array], config: FisherConfig) -> jax.Array:
  """Fisher-weighted average of one tensor (see the module docstring)."""
  del base
  ps, fs = _split(models)
  k = len(ps)
  w = jnp.ones(k, jnp.float32) if config.weight is None else jnp.asarray(config.weight,
                                                                          jnp.float32)
  p = jnp.stack([jnp.asarray(x, jnp.float32) for x in ps])
  f = jnp.maximum(jnp.stack([jnp.asarray(x, jnp.float32) for x in fs]), config.min_fisher)
  f = f * w.reshape((-1,) + (1,) * (f.ndim - 1))
  return (jnp.sum(f * p, 0) / jnp.sum(f, 0)).astype(ps[0].dtype)


def _pairs(ctx: CheckContext, what: str) -> tuple[list, list]:
  shapes = [s for s in ctx.shapes if s is not None]
  if len(shapes) % 2:
    raise ValueError(f"{ctx.where}: {ctx.record!r} takes the models' tensors then one {what} "
                     f"per model (an even number of inputs), got {len(shapes)}: "
                     + ", ".join(ctx.labels))
  return shapes[:len(shapes) // 2], shapes[len(shapes) // 2:]


def _regmean_static(ctx: CheckContext) -> None:
  ax = ctx.config.input_axis
  if ax not in (0, 1):
    raise ValueError(f"{ctx.where}: 'regmean' parameter input_axis must be 0 or 1, got {ax!r}")
  shapes = [tuple(s) for s in ctx.shapes if s is not None]
  for lb, s in zip(ctx.labels, shapes):
    if len(s) != 2:
      raise ValueError(f"{ctx.where}: 'regmean' merges 2-D weights with [k, k] Grams; {lb} has "
                       f"shape {s}")
  if len(set(shapes)) == 1:  # weights only (grams= option), or square weights and their Grams
    return
  ws, gs = _pairs(ctx, "Gram matrix")
  for lb, s in zip(ctx.labels, ws):
    if tuple(s) != tuple(ws[0]):
      raise ValueError(f"{ctx.where}: 'regmean' merges weights of one shape; {lb} has "
                       f"shape {tuple(s)}, expected {tuple(ws[0])}")
  k = ws[0][ax]
  for lb, s in zip(ctx.labels[len(ws):], gs):
    if tuple(s) != (k, k):
      raise ValueError(f"{ctx.where}: {lb} has shape {tuple(s)}, expected {(k, k)} (the "
                       f"weight's input size, axis {ax})")


regmean_inputs = Check("regmean_inputs", static=_regmean_static)


def _fisher_static(ctx: CheckContext) -> None:
  ps, fs = _pairs(ctx, "Fisher diagonal")
  for lb, s in zip(ctx.labels, ps + fs):
    if tuple(s) != tuple(ps[0]):
      raise ValueError(f"{ctx.where}: 'fisher' needs every weight and Fisher of one shape; {lb} "
                       f"has shape {tuple(s)}, expected {tuple(ps[0])}")
  w = ctx.config.weight
  if w is not None and not is_traced(w) and len(tuple(w)) != len(ps):
    raise ValueError(f"{ctx.where}: 'fisher' parameter weight has {len(tuple(w))} values for "
                     f"{len(ps)} models")


fisher_inputs = Check("fisher_inputs", static=_fisher_static)

REGMEAN = Transform(
    name="regmean", fn=regmean_tensor, config=RegMeanConfig, array_params=("alpha", "eps"),
    checks=(float_inputs, regmean_inputs, in_range("alpha", 0.0, 1.0), in_range("eps", 0.0),
            finite),
    inputs="base+models", base="ignored", min_models=1, options=("grams",),
    description="RegMean: per linear layer W* = (sum G_i)^-1 sum G_i W_i from input Grams",
    info={"statistics": "gram"}, kind="merge method")
"""The RegMean record (weights then Grams, or ``grams=``)."""

FISHER = Transform(
    name="fisher", fn=fisher_tensor, config=FisherConfig, array_params=("min_fisher",),
    checks=(float_inputs, fisher_inputs, in_range("min_fisher", 0.0, lo_open=True), finite),
    inputs="base+models", base="ignored", min_models=2,
    description="Fisher merging: diagonal-Fisher-weighted average (weights then Fishers)",
    info={"statistics": "fisher"}, kind="merge method")
"""The Fisher-merging record (weights then Fisher diagonals)."""

RECORDS = Registry("data-aware merge method", (REGMEAN, FISHER))
"""The data-aware merge records, by name."""
