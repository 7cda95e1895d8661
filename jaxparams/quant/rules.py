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

import dataclasses
import functools
import re
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree
from jaxparams.calib.stats import InputStats
from jaxparams.quant.qarray import QArray

__all__ = [
    "DEFAULT_KEEP", "KEEP", "QuantEntry", "QuantReport", "quantize_tree", "normalize_rules",
    "is_calibrated", "is_keep", "quantize_planned", "finish_report",
    "parse_spec", "quantize_leaf", "plan_tree", "layer_error", "effective_weight",
]

# Leaves kept in full precision unless ``keep=`` says otherwise: (pattern, reason).
DEFAULT_KEEP: tuple[tuple[str, str], ...] = (
    (r"re:(.*/)?bias", "bias"),
    (r"re:.*(embed|embedding|wte|wpe|position_emb|token_type).*", "embedding"),
    (r"re:.*(norm|ln_\d*|ln_f|layernorm).*", "norm"),
    (r"re:.*(lm_head|output_embed|classifier|pooler).*", "lm head / pooler"),
)

KEEP = "keep"
_KEEP_WORDS = (None, "keep", "none", "fp", "full", "skip")


@dataclasses.dataclass(frozen=True)
class QuantEntry:
  """What one leaf got.

  Attributes:
    path: the leaf's tree path.
    method: method name, or ``'keep'`` for full precision.
    reason: why (``'rule 0'``, ``'default: norm'``, ``'not a matrix'``, ``'no rule'``).
    shape: the leaf's shape.
    bits: code width (``None`` when kept).
    group_size: rows per group along K (``None`` when kept).
    bytes_before: bytes of the original leaf.
    bytes_after: bytes stored after quantization (codes + scales + zeros).
    error: relative weight error ``||W - Q(W)||_F / ||W||_F`` (``None`` when kept).
    output_error: relative layer-output error
      ``sqrt(tr(dW^T H dW) / tr(W^T H W))`` with the calibration Hessian, when known.
    seconds: wall time spent quantizing this leaf.
  """
  path: str
  method: str
  reason: str
  shape: tuple[int, ...]
  bits: int | None = None
  group_size: int | None = None
  bytes_before: int = 0
  bytes_after: int = 0
  error: float | None = None
  output_error: float | None = None
  seconds: float = 0.0

  @property
  def quantized(self) -> bool:
    return self.method != KEEP


@dataclasses.dataclass
class QuantReport:
  """Per-leaf outcome of :func:`quantize_tree` (``entries`` in tree order).

  Example:
    >>> r = QuantReport()
    >>> r.add(QuantEntry(path='w', method='keep', reason='no rule', shape=(2,), bytes_before=8,
    ...                  bytes_after=8))
    >>> r.bytes_before, r.bytes_after, r.num_quantized
    (8, 8, 0)
  """
  entries: dict[str, QuantEntry] = dataclasses.field(default_factory=dict)

  def add(self, entry: QuantEntry) -> None:
    self.entries[entry.path] = entry

  @property
  def bytes_before(self) -> int:
    return sum(e.bytes_before for e in self.entries.values())

  @property
  def bytes_after(self) -> int:
    return sum(e.bytes_after for e in self.entries.values())

  @property
  def num_quantized(self) -> int:
    return sum(e.quantized for e in self.entries.values())

  def quantized(self) -> list[QuantEntry]:
    return [e for e in self.entries.values() if e.quantized]

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready summary (what each path got, sizes, errors)."""
    return {"bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
            "num_quantized": self.num_quantized,
            "entries": [dataclasses.asdict(e) for e in self.entries.values()]}

  def table(self, *, only_quantized: bool = False) -> str:
    """A plain-text table, one row per leaf."""
    rows = [("path", "method", "bits", "group", "shape", "bytes", "error", "reason")]
    for e in self.entries.values():
      if only_quantized and not e.quantized:
        continue
      err = "" if e.error is None else f"{e.error:.4f}"
      if e.output_error is not None:
        err += f" (out {e.output_error:.4f})"
      rows.append((e.path, e.method, "" if e.bits is None else str(e.bits),
                   "" if e.group_size is None else str(e.group_size),
                   "x".join(map(str, e.shape)), f"{e.bytes_before}->{e.bytes_after}", err,
                   e.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(f"total {self.bytes_before} -> {self.bytes_after} bytes "
                 f"({self.num_quantized} quantized)")
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.table()


# ----------------------------------------------------------------------------- specs
@dataclasses.dataclass(frozen=True)
class _Method:
  """A quantizer's record, as the rule parser sees it."""
  name: str
  record: Any
  config_cls: type
  calibrated: bool


def _method_names() -> list[str]:
  from jaxparams.quant import methods  # pylint: disable=g-import-not-at-top
  return sorted(methods.quantizer_names())


def _get(name: str) -> _Method:
  """The quantizer called ``name`` (ValueError listing the valid names if unknown)."""
  from jaxparams.quant import methods  # pylint: disable=g-import-not-at-top
  q = methods.get_quantizer(name)
  r = methods.get_record(q.name)
  return _Method(q.name, r, r.config, q.needs != "none")


def is_calibrated(method: str) -> bool:
  """Whether method ``method`` needs calibration statistics (ValueError if unknown).

  Example:
    >>> is_calibrated('gptq'), is_calibrated('rtn')
    (True, False)
  """
  return _get(method).calibrated


def _config_class(entry: _Method, name: str) -> type:
  return entry.config_cls


def _make_config(entry: Any, name: str, fields: Mapping[str, Any] | None, where: str):
  from jaxparams.quant import methods  # pylint: disable=g-import-not-at-top
  try:
    return methods.make_config(name, **dict(fields or {}))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {e}") from None


def is_keep(spec: Any) -> bool:
  """Whether a rule value means "keep full precision" (``None`` or a keep word).

  Example:
    >>> [is_keep(w) for w in (None, 'keep', 'FULL', 'fp', 'rtn')]
    [True, True, True, True, False]
  """
  return spec is None or (isinstance(spec, str) and spec.lower() in _KEEP_WORDS)


def parse_spec(spec: Any, *, where: str = "rule") -> tuple[str, Any] | None:
  """Normalizes a rule value to ``(method_name, config)``, or ``None`` for keep.

  Example:
    >>> parse_spec('keep') is None
    True
    >>> name, cfg = parse_spec({'method': 'rtn', 'bits': 8})
    >>> name, cfg.bits
    ('rtn', 8)
  """
  if is_keep(spec):
    return None
  if isinstance(spec, str):
    name, fields = spec, None
  elif isinstance(spec, Mapping):
    fields = dict(spec)
    name = fields.pop("method", None)
    if name is None:
      raise ValueError(f"{where}: a dict spec needs a 'method' key, got {spec!r}")
    if is_keep(name):
      return None
  elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
    name, fields = spec
  else:
    raise ValueError(f"{where}: cannot read quantization spec {spec!r}; use a method name, "
                     "(name, config), {'method': name, ...} or 'keep'")
  name = name.lower()
  try:
    entry = _get(name)
  except (KeyError, ValueError) as e:
    raise ValueError(f"{where}: unknown method {name!r}; valid: {_method_names()}") from e
  if fields is None or isinstance(fields, Mapping):
    cfg = _make_config(entry, name, fields, where)
  elif dataclasses.is_dataclass(fields):
    cfg = fields
    cls = _config_class(entry, name)
    if not isinstance(cfg, cls):
      raise ValueError(f"{where}: method {name!r} takes a {cls.__name__}, got "
                       f"{type(cfg).__name__}")
  else:
    raise ValueError(f"{where}: config for {name!r} must be a dataclass or dict, got {fields!r}")
  return name, cfg


def normalize_rules(rules: Any) -> list[tuple[Any, Any]]:
  """Accepts a spec (applied to ``'**'``), a list of ``(pattern, spec)``, or a list of dicts
  ``{'pattern': ..., 'method': ..., **config}`` (YAML form); returns ``[(pattern, spec)]``."""
  if rules is None:
    raise ValueError("quantize_tree: rules are required (e.g. [('**/kernel', 'rtn')])")
  if isinstance(rules, (str, Mapping)) and not (isinstance(rules, Mapping) and
                                                 "pattern" in rules):
    return [("**", rules)]
  if (isinstance(rules, tuple) and len(rules) == 2 and isinstance(rules[0], str)
      and (dataclasses.is_dataclass(rules[1]) or isinstance(rules[1], Mapping))):
    return [("**", rules)]
  if not isinstance(rules, (list, tuple)):
    raise ValueError(f"quantize_tree: rules must be a list of (pattern, spec), got {rules!r}")
  out = []
  for i, r in enumerate(rules):
    if isinstance(r, Mapping):
      r = dict(r)
      if "pattern" not in r:
        raise ValueError(f"rule {i}: a dict rule needs 'pattern', got {r!r}")
      pat = r.pop("pattern")
      out.append((pat, r if r.get("method") is not None else None))
    elif isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], (str, re.Pattern)):
      out.append((r[0], r[1]))
    else:
      raise ValueError(f"rule {i}: expected (pattern, spec) or a dict with 'pattern', got {r!r}")
  if not out:
    raise ValueError("quantize_tree: the rule list is empty")
  return out


# ----------------------------------------------------------------------------- planning
def _is_matrix(x: Any) -> bool:
  return (hasattr(x, "shape") and hasattr(x, "dtype") and len(x.shape) >= 2
          and jnp.issubdtype(x.dtype, jnp.floating))


def _nbytes(x: Any) -> int:
  if isinstance(x, QArray):
    return x.nbytes
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
  return 0


def plan_tree(flat: Mapping[str, Any], rules: Any, *,
              keep: Sequence[Any] = DEFAULT_KEEP) -> tuple[dict[str, tuple[str, Any] | None],
                                                          dict[str, str]]:
  """Decides what every leaf gets, without quantizing.

  Returns:
    ``(plan, reasons)``: ``plan[path]`` is ``(method, config)`` or ``None`` (keep);
    ``reasons[path]`` says why.

  Raises:
    ValueError (``jp.tree.NoMatchError``): a rule claims no candidate leaf; bad specs.
  """
  rules = normalize_rules(rules)
  keep_rules = [(k, "default") if isinstance(k, (str, re.Pattern)) else tuple(k) for k in keep]
  keep_match = [(jtree.compile_pattern(p), why) for p, why in keep_rules]
  reasons: dict[str, str] = {}
  candidates: dict[str, Any] = {}
  for path, leaf in flat.items():
    if not _is_matrix(leaf):
      reasons[path] = "not a matrix"
      continue
    why = next((w for m, w in keep_match if m(path)), None)
    if why is not None:
      reasons[path] = f"default: {why}"
      continue
    candidates[path] = leaf
  parsed = [(pat, parse_spec(spec, where=f"rule {i} ({pat!r})"))
            for i, (pat, spec) in enumerate(rules)]
  indexed = [(pat, i) for i, (pat, _) in enumerate(parsed)]
  try:
    if not candidates:
      raise jtree.NoMatchError("no leaf can be quantized (no floating matrix outside the kept "
                               "defaults)")
    which = jtree.resolve_rules(candidates, indexed, flat=True, strict=True)
  except jtree.NoMatchError as e:
    kept = [p for p, r in reasons.items() if r.startswith("default")]
    raise jtree.NoMatchError(
        f"quantize_tree: {e} (candidates are floating leaves with >= 2 dims not kept by "
        f"default; kept by default: {kept[:6]}{' ...' if len(kept) > 6 else ''}; pass keep=() "
        "to quantize those too)") from None
  plan: dict[str, tuple[str, Any] | None] = {}
  for path in flat:
    if path in which:
      i = which[path]
      plan[path] = parsed[i][1]
      reasons[path] = f"rule {i}" if parsed[i][1] is not None else f"rule {i}: keep"
    else:
      plan[path] = None
      reasons.setdefault(path, "no rule")
  return plan, reasons


# ----------------------------------------------------------------------------- one leaf
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


@functools.partial(jax.jit, static_argnums=(1,))
def _dequantize(q: Any, dtype: Any) -> jax.Array:
  return q.dequantize(dtype)


def effective_weight(q: Any, dtype: Any = jnp.float32) -> jax.Array:
  """The float ``[K, N]`` a quantized leaf stands for (QArray or AWQ result)."""
  return _dequantize(q, jnp.dtype(dtype).name)


def _qarray_of(q: Any) -> QArray:
  return q if isinstance(q, QArray) else q.qarray


@jax.jit
def _errors(w, wq, h):
  w = w.astype(jnp.float32).reshape(-1, w.shape[-1])
  d = wq.astype(jnp.float32).reshape(w.shape) - w
  err = jnp.linalg.norm(d) / jnp.maximum(jnp.linalg.norm(w), 1e-30)
  if h is None:
    return err, None
  num = jnp.sum(d * (h @ d))
  den = jnp.sum(w * (h @ w))
  return err, jnp.sqrt(jnp.maximum(num, 0.0) / jnp.maximum(den, 1e-30))


def layer_error(w: jax.Array, wq: jax.Array, hessian: jax.Array | None = None
                ) -> tuple[float, float | None]:
  """``(||dW||/||W||, sqrt(tr(dW^T H dW)/tr(W^T H W)))`` (second is None without H).

  Example:
    >>> import jax.numpy as jnp
    >>> layer_error(jnp.ones((2, 2)), jnp.zeros((2, 2)))
    (1.0, None)
  """
  h = None if hessian is None else jnp.asarray(hessian, jnp.float32)
  err, out = _errors(jnp.asarray(w), jnp.asarray(wq), h)
  return float(err), None if out is None else float(out)


def make_entry(path: str, w: Any, qa: QArray, method: str, reason: str, *, stats: Any = None,
               seconds: float = 0.0) -> QuantEntry:
  """Builds the report entry of a quantized leaf (errors measured on the dequantized value)."""
  h = None if stats is None else stats.gram
  err, out_err = layer_error(w, effective_weight(qa), h)
  inner = _qarray_of(qa)
  extra = sum(_nbytes(x) for x in jax.tree_util.tree_leaves(qa)) - sum(
      _nbytes(x) for x in jax.tree_util.tree_leaves(inner))
  return QuantEntry(path=path, method=method, reason=reason, shape=tuple(w.shape),
                    bits=inner.bits, group_size=inner.group_size, bytes_before=_nbytes(w),
                    bytes_after=inner.nbytes + extra,
                    error=err, output_error=out_err, seconds=seconds)


def keep_entry(path: str, leaf: Any, reason: str) -> QuantEntry:
  return QuantEntry(path=path, method=KEEP, reason=reason,
                    shape=tuple(getattr(leaf, "shape", ())), bytes_before=_nbytes(leaf),
                    bytes_after=_nbytes(leaf))


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
  out = {}
  for path, leaf in flat.items():
    if plan[path] is None:
      out[path] = leaf
      continue
    if progress is not None:
      progress(path)
    k = int(np.prod(leaf.shape[:-1]))
    out[path] = quantize_planned(path, leaf, plan[path], reasons[path], report,
                                 stats=_stats_for(path, calibration.get(path), k))
  report = finish_report(flat, report, reasons)
  return jtree.unflatten(out, like=params), report
