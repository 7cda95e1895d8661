"""Per-leaf statistics of a parameter tree, as data and as a table."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.tree.paths import PyTree, flatten
from jaxparams.tree.select import Selector, select

__all__ = ["LeafStats", "Summary", "summary", "leaf_stats", "gg_shape_from_ratio"]


@dataclasses.dataclass(frozen=True)
class LeafStats:
  """Statistics of one leaf. Moments are ``nan`` when not computed."""
  path: str
  shape: tuple[int, ...]
  dtype: str
  params: int
  bytes: int
  mean: float = math.nan
  std: float = math.nan
  absmax: float = math.nan
  zeros: float = math.nan
  gg_shape: float = math.nan


@dataclasses.dataclass(frozen=True)
class Summary:
  """Rows of :class:`LeafStats` plus totals; ``str()`` gives a table."""
  rows: tuple[LeafStats, ...]

  @property
  def params(self) -> int:
    return sum(r.params for r in self.rows)

  @property
  def bytes(self) -> int:
    return sum(r.bytes for r in self.rows)

  def to_table(self, title: str | None = None):
    """Returns a ``rich.table.Table``."""
    from rich.table import Table  # pylint: disable=g-import-not-at-top
    t = Table(title=title, show_footer=True)
    t.add_column("path", footer="total", overflow="fold")
    t.add_column("shape")
    t.add_column("dtype")
    t.add_column("params", justify="right", footer=f"{self.params:,}")
    t.add_column("bytes", justify="right", footer=human_bytes(self.bytes))
    stats = any(not math.isnan(r.mean) for r in self.rows)
    if stats:
      for c in ("mean", "std", "absmax", "zeros", "GG shape"):
        t.add_column(c, justify="right")
    for r in self.rows:
      cells = [r.path, str(r.shape), r.dtype, f"{r.params:,}", human_bytes(r.bytes)]
      if stats:
        cells += [f"{r.mean:.4g}", f"{r.std:.4g}", f"{r.absmax:.4g}", f"{r.zeros:.2%}",
                  f"{r.gg_shape:.2f}"]
      t.add_row(*cells)
    return t

  def __str__(self) -> str:
    from rich.console import Console  # pylint: disable=g-import-not-at-top
    console = Console(width=140, record=True, file=_Null())
    console.print(self.to_table())
    return console.export_text()


class _Null:
  def write(self, *_):
    pass

  def flush(self):
    pass


def human_bytes(n: float) -> str:
  """Formats a byte count (``1536 -> '1.5 KiB'``)."""
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return str(n)


_GG_TABLE = np.round(np.arange(0.1, 3.0 + 1e-9, 0.01), 2)


def gg_shape_from_ratio(rho: float) -> float:
  """Generalized-Gaussian shape ``nu`` from ``rho = E[x^2] / E[|x|]^2`` (uncentred), as the
  reference of "It Takes a Good Model to Train a Good Model" estimates it: the entry of the table
  ``nu in [0.1, 3.0]`` (step 0.01) whose ``Gamma(1/nu) Gamma(3/nu) / Gamma(2/nu)^2`` is nearest.

  Example:
    >>> gg_shape_from_ratio(math.pi / 2), gg_shape_from_ratio(2.0)
    (2.0, 1.0)
  """
  if not math.isfinite(rho):
    return math.nan
  table = [math.exp(math.lgamma(1 / v) + math.lgamma(3 / v) - 2 * math.lgamma(2 / v))
           for v in _GG_TABLE]
  return float(_GG_TABLE[int(np.argmin(np.abs(np.asarray(table) - rho)))])


@jax.jit
def _moments(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  a = jnp.abs(x)
  return jnp.stack([x.mean(), x.std(), a.max(), (x == 0).mean(), jnp.mean(x * x) / a.mean() ** 2])


def leaf_stats(path: str, x: Any, *, stats: bool = True) -> LeafStats:
  """Statistics of one array (moments on device, without gathering shards)."""
  shape = tuple(np.shape(x))
  dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype
  n = int(np.prod(shape, dtype=np.int64))
  nbytes = int(getattr(x, "nbytes", n * dtype.itemsize))
  if not stats or n == 0 or not (np.issubdtype(dtype, np.number) or dtype.kind == "V" or
                                  str(dtype).startswith(("bfloat", "float"))):
    return LeafStats(path, shape, str(dtype), n, nbytes)
  m = [float(v) for v in np.asarray(_moments(jnp.asarray(x)))]
  return LeafStats(path, shape, str(dtype), n, nbytes, *m[:4], gg_shape_from_ratio(m[4]))


def summary(tree: PyTree, where: Selector = None, *, stats: bool = True) -> Summary:
  """Summarises a tree: path, shape, dtype, params, bytes, mean/std/abs-max, zeros and the
  generalized-Gaussian shape ``nu`` of the values (:func:`gg_shape_from_ratio`; 2 = Gaussian,
  1 = Laplacian).

  Args:
    tree: parameter pytree (arrays of any dtype; sharded arrays are fine).
    where: optional selector of the leaves to include.
    stats: compute the moments (one small jitted reduction per leaf).

  Returns:
    A :class:`Summary`; ``print(summary(params))`` shows a table with totals.

  Example:
    >>> import jax.numpy as jnp
    >>> s = summary({'w': jnp.zeros((2, 3))})
    >>> s.params, s.rows[0].zeros
    (6, 1.0)
  """
  flat = flatten(tree)
  rows = [leaf_stats(p, flat[p], stats=stats)
          for p in select(flat, where, flat=True) if hasattr(flat[p], "shape")]
  return Summary(tuple(rows))


def summary_from_specs(specs: Sequence[tuple[str, tuple[int, ...], str, int]]) -> Summary:
  """Builds a stats-free summary from ``(path, shape, dtype, nbytes)`` records."""
  return Summary(tuple(
      LeafStats(p, tuple(s), str(d), int(np.prod(s, dtype=np.int64)), int(b)) for p, s, d, b in specs))
