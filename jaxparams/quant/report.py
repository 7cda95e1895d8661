"""What quantization did to each leaf: :class:`QuantEntry`, :class:`QuantReport` and errors.

Example:
  >>> r = QuantReport()
  >>> r.add(QuantEntry(path='w', method='keep', reason='no rule', shape=(2,), bytes_before=8,
  ...                  bytes_after=8))
  >>> r.num_quantized, layer_error(jnp.ones((2, 2)), jnp.zeros((2, 2)))
  (0, (1.0, None))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.quant.qarray import QArray

__all__ = ["KEEP", "QuantEntry", "QuantReport", "effective_weight", "layer_error", "make_entry",
           "keep_entry"]

KEEP = "keep"


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


def _nbytes(x: Any) -> int:
  if isinstance(x, QArray):
    return x.nbytes
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
  return 0


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
