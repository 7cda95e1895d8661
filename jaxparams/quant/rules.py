"""``quantize_tree``: quantize a whole parameter tree by ordered, first-match path rules.

Rules are ``(pattern, spec)`` pairs, tried in order; the first pattern matching a
leaf's path (``jp.tree.resolve_rules``: glob with ``*`` inside a component and
``**`` across, ``'re:...'`` or ``re.compile`` for a regex full match) decides
what that leaf gets. A ``spec`` is

* a method name: ``'rtn'``, ``'gptq'``, ... (the method's default config);
* ``(name, config)`` where ``config`` is the method's frozen config dataclass or a
  dict of its fields (``{'bits': 4, 'group_size': 32}``);
* a dict ``{'method': name, **fields}`` (the form read from a YAML rules file);
* ``None`` / ``'keep'``: leave the leaf in full precision.

Only floating leaves with at least two dimensions are candidates. By default
(``keep=DEFAULT_KEEP``) embeddings, norms, biases and the LM head are kept in
full precision before any rule is consulted; pass ``keep=()`` to let rules reach
them. A rule that claims no candidate leaf is an error (a typo in a pattern must
not silently quantize nothing).

Each method's leaves go through the transform layer's tree driver
(:func:`jaxparams.transform.apply_tree`) with the method's record, so the record's checks
(bits, group size, a float matrix, finite: :mod:`jaxparams.quant.record`) run once per leaf
and the finiteness flags of all leaves are read in one transfer.

Calibrated methods (GPTQ, AWQ, decoupleQ) need per-layer statistics:
``calibration`` maps a kernel path to a :class:`~jaxparams.calib.InputStats`
or to the raw inputs ``x[..., K]`` that the layer saw (see
:mod:`jaxparams.quant.calibrate`, which also quantizes a model block by block).

Example:
  >>> import jax, jax.numpy as jnp
  >>> params = {'embed': {'embedding': jnp.ones((10, 8))},
  ...           'dense': {'kernel': jax.random.normal(jax.random.key(0), (64, 8)),
  ...                     'bias': jnp.zeros(8)}}
  >>> q, report = quantize_tree(params, [('**/kernel', ('rtn', {'bits': 4, 'group_size': 32}))])
  >>> type(q['dense']['kernel']).__name__, q['embed']['embedding'].shape
  ('QArray', (10, 8))
  >>> report.entries['dense/kernel'].method, report.entries['dense/kernel'].bits
  ('rtn', 4)
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree
from jaxparams.calib.stats import InputStats
from jaxparams.quant import record as qrec
from jaxparams.quant.plan import (_KEEP_WORDS, DEFAULT_KEEP, _get, _method_names,  # noqa: F401
                                  is_calibrated, is_keep, normalize_rules, parse_spec, plan_tree)
from jaxparams.quant.report import (KEEP, QuantEntry, QuantReport,  # noqa: F401
                                    effective_weight, keep_entry, layer_error, make_entry)
from jaxparams.transform import apply_tree

__all__ = [
    "DEFAULT_KEEP", "KEEP", "QuantEntry", "QuantReport", "quantize_tree", "normalize_rules",
    "is_calibrated", "is_keep", "quantize_planned", "finish_report",
    "parse_spec", "quantize_leaf", "plan_tree", "layer_error", "effective_weight",
]


_OLD_STATS_KEYS = {"hessian_sum": "xtx", "abs_sum": "abs_sum", "n": "count"}


def _stats_for(path: str, stats: Any, k: int):
  """Normalizes calibration input for one leaf to an InputStats (or None)."""
  if stats is None:
    return None
  if not isinstance(stats, InputStats):
    if isinstance(stats, Mapping):
      fields = {_OLD_STATS_KEYS.get(key, key): v for key, v in stats.items()}
      bad = sorted(set(fields) - {"xtx", "abs_sum", "count"})
      if bad:
        raise ValueError(f"calibration for {path!r}: unknown statistics field(s) {bad}; valid: "
                         "['abs_sum', 'count', 'xtx']")
      stats = InputStats(xtx=jnp.asarray(fields["xtx"], jnp.float32),
                         abs_sum=jnp.asarray(fields["abs_sum"], jnp.float32),
                         count=jnp.asarray(fields["count"], jnp.float32))
    else:
      stats = InputStats.from_inputs(stats, name=path)
  stats.check(k, name=path)
  return stats


def quantize_leaf(w: jax.Array, method: str, config: Any, *, stats: Any = None,
                  name: str = "") -> Any:
  """Quantizes one matrix with a registry method, passing calibration when it takes it.

  Args:
    w: float ``[K, N]`` (more dims are flattened by the method).
    method: registry name.
    config: the method's config.
    stats: :class:`~jaxparams.calib.InputStats` (or raw inputs ``[..., K]``).
    name: the tree path (for error messages).

  Returns:
    A :class:`QArray`; for AWQ an ``AWQResult`` (``qarray`` of the scaled weight and the
    ``input_scale`` to divide inputs by; ``.dequantize()`` gives the effective weight).

  Raises:
    ValueError: a calibrated method without statistics; wrong calibration shape.
  """
  entry = _get(method)
  k = int(np.prod(w.shape[:-1]))
  stats = _stats_for(name, stats, k)
  return entry.record(w, config=config, options={"stats": stats, "name": name}, path=name)


# ----------------------------------------------------------------------------- the drivers' step
def quantize_planned(path: str, w: Any, spec: tuple[str, Any], reason: str, report: QuantReport,
                     *, stats: Any = None) -> Any:
  """One planned leaf: :func:`quantize_leaf`, timed, its entry added to ``report``.

  The step shared by :func:`quantize_tree`, :func:`jaxparams.quant.quantize_model` and
  the streaming :func:`jaxparams.quant.quantize_checkpoint`.
  """
  method, cfg = spec
  t0 = time.perf_counter()
  qa = quantize_leaf(w, method, cfg, stats=stats, name=path)
  jax.block_until_ready(qa)
  report.entries[path] = make_entry(path, w, qa, method, reason, stats=stats,
                                    seconds=time.perf_counter() - t0)
  return qa


def finish_report(leaves: Mapping[str, Any], report: QuantReport,
                  reasons: Mapping[str, str]) -> QuantReport:
  """The report in leaf order, with a keep entry for every leaf not quantized."""
  final = QuantReport()
  for path, leaf in leaves.items():
    final.add(report.entries[path] if path in report.entries else
              keep_entry(path, leaf, reasons[path]))
  return final


# ----------------------------------------------------------------------------- the tree
def _drive(record: Any, leaves: dict[str, Any], plan: Mapping[str, Any],
           reasons: Mapping[str, str], calibration: Mapping[str, Any], report: QuantReport,
           out: dict[str, Any], progress: Callable[[str], None] | None) -> None:
  """One method's leaves through the transform layer's tree driver (checks read once)."""
  stats = {p: _stats_for(p, calibration.get(p), int(np.prod(w.shape[:-1])))
           for p, w in leaves.items()}
  for p in leaves:
    qrec.require_stats(record, stats[p], name=p)
  started: dict[str, float] = {}

  def options(path: str) -> dict[str, Any]:
    if progress is not None:
      progress(path)
    started[path] = time.perf_counter()
    return {"stats": stats[path], "name": path}

  # ``leaves`` is flat ({path: array}): the driver's paths are the tree's paths.
  done = apply_tree(record, leaves, leaf_config=lambda p: plan[p][1], leaf_options=options)
  jax.block_until_ready(done)
  ends = list(started.values())[1:] + [time.perf_counter()]
  for (path, t0), t1 in zip(started.items(), ends):
    out[path] = done[path]
    report.entries[path] = make_entry(path, leaves[path], done[path], plan[path][0],
                                      reasons[path], stats=stats[path], seconds=t1 - t0)


def quantize_tree(params: Any, rules: Any, calibration: Mapping[str, Any] | None = None, *,
                  keep: Sequence[Any] = DEFAULT_KEEP,
                  progress: Callable[[str], None] | None = None) -> tuple[Any, QuantReport]:
  """Quantizes every leaf a rule claims; returns ``(qparams, report)``.

  Args:
    params: a pytree of arrays (e.g. a flax ``'params'`` collection).
    rules: ordered ``[(pattern, spec), ...]`` (see the module docstring), or a
      single spec applied to every candidate (``'rtn'``, ``('gptq', cfg)``).
    calibration: ``{path: InputStats | inputs[..., K]}`` for calibrated methods.
      For a model, prefer :func:`jaxparams.quant.calibrate.quantize_model`, which
      captures them layer by layer.
    keep: ``(pattern, reason)`` pairs kept in full precision before the rules are
      consulted (default: embeddings, norms, biases, LM head).
    progress: optional callback called with each path before it is quantized.

  Returns:
    ``(qparams, report)``: the tree with :class:`QArray` leaves where quantized,
    and a :class:`QuantReport`.

  Raises:
    ValueError: a rule matches nothing (``jp.tree.NoMatchError``); unknown method or
      parameter; calibration missing or of the wrong shape; unsupported bits or group
      size, or NaN in a weight (named by path).
  """
  flat = jtree.flatten(params)
  plan, reasons = plan_tree(flat, rules, keep=keep)
  calibration = dict(calibration or {})
  unknown = sorted(set(calibration) - set(flat))
  if unknown:
    raise ValueError(f"quantize_tree: calibration given for paths not in the tree: {unknown[:5]}")
  report = QuantReport()
  out = dict(flat)
  by_method: dict[str, list[str]] = {}
  for path in flat:
    if plan[path] is not None:
      by_method.setdefault(plan[path][0], []).append(path)
  for method, paths in by_method.items():
    _drive(_get(method).record, {p: flat[p] for p in paths}, plan, reasons, calibration, report,
           out, progress)
  report = finish_report(flat, report, reasons)
  report = finish_report(flat, report, reasons)
  return jtree.unflatten(out, like=params), report
