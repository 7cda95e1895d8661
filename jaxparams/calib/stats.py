"""One statistics type for the inputs of a linear layer: :class:`InputStats`.

Convention (the only one in jaxparams): float32 *sums*, accumulated batch by
batch,

* ``xtx``: the uncentered ``sum_t x_t x_t^T`` ``[K, K]``,
* ``abs_sum``: ``sum_t |x_t|`` per input channel ``[K]``,
* ``count``: the number of rows ``n`` (tokens) seen,

over the rows ``x_t`` of the inputs ``x[..., K]`` (all leading axes are rows;
rows whose token mask is 0 contribute nothing). Every method reads what it
needs from properties: GPTQ, decoupleQ and SparseGPT take :attr:`InputStats.hessian`
(``H = 2 X^T X / n``), AWQ and Wanda take :attr:`InputStats.abs_mean` (mean
``|x|``), and :attr:`InputStats.gram` is ``X^T X / n``.

Sums merge by addition (``a + b``), so statistics of batches, hosts or mesh
shards combine exactly: inside ``shard_map`` use :meth:`InputStats.psum`.
:class:`InputStats` is a pytree and :func:`accumulate` is pure ``jnp``, so
accumulation runs in ``jit``/``lax.scan``.

Example:
  >>> import jax, numpy as np
  >>> x = jax.random.normal(jax.random.key(0), (32, 16))
  >>> s = InputStats.from_inputs(x[:16]).update(x[16:])
  >>> s.n, s.hessian.shape
  (32, (16, 16))
  >>> bool(np.allclose(s.hessian, 2 * x.T @ x / 32, atol=1e-4))
  True
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["InputStats", "accumulate", "accumulate_gram", "as_hessian"]

_HI = jax.lax.Precision.HIGHEST


def _moments(x: jax.Array, mask: jax.Array | None):
  """``(X^T X, sum|x|, rows)`` of ``x[..., K]`` in float32; ``mask[...]`` zeroes rows."""
  k = x.shape[-1]
  x = x.reshape(-1, k).astype(jnp.float32)
  if mask is None:
    n = jnp.float32(x.shape[0])
  else:
    m = jnp.asarray(mask).astype(jnp.float32).reshape(-1, 1)
    x = x * m
    n = jnp.sum(m)
  return jnp.matmul(x.T, x, precision=_HI), jnp.sum(jnp.abs(x), axis=0), n


@dataclasses.dataclass(frozen=True)
class InputStats:
  """Streaming statistics of the inputs ``x[..., K]`` of one linear layer ``y = x @ W``.

  Attributes:
    xtx: float32 ``[K, K]``, ``sum_t x_t x_t^T`` (uncentered).
    abs_sum: float32 ``[K]``, ``sum_t |x_t|``.
    count: float32 scalar, rows seen.

  Example:
    >>> import numpy as np
    >>> s = InputStats.from_inputs(np.ones((3, 4, 2), np.float32))
    >>> s.n, s.gram.tolist(), s.hessian.tolist()
    (12, [[1.0, 1.0], [1.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]])
  """

  xtx: jax.Array
  abs_sum: jax.Array
  count: jax.Array

  # ------------------------------------------------------------------ building
  @classmethod
  def zeros(cls, k: int) -> "InputStats":
    """Empty statistics for ``K = k`` input features."""
    return cls(xtx=jnp.zeros((k, k), jnp.float32), abs_sum=jnp.zeros((k,), jnp.float32),
               count=jnp.zeros((), jnp.float32))

  @classmethod
  def from_inputs(cls, x: Any, *, mask: Any = None, name: str = "") -> "InputStats":
    """Statistics of inputs ``x[..., K]`` (validated; see :meth:`update`)."""
    x = _check_inputs(x, name=name, k=None)
    return cls.zeros(x.shape[-1]).update(x, mask=mask, name=name)

  def update(self, x: Any, *, mask: Any = None, name: str = "") -> "InputStats":
    """Returns these statistics plus the rows of ``x[..., K]`` (``mask[...] == 0`` rows skipped).

    Raises:
      ValueError: ``x`` not floating, fewer than 2 dims, a K different from these
        statistics, a mask of another shape than ``x.shape[:-1]``, or NaN/inf.
    """
    x = _check_inputs(x, name=name, k=self.k)
    if mask is not None and tuple(np.shape(mask)) != tuple(x.shape[:-1]):
      raise ValueError(f"calibration mask for {name!r} has shape {tuple(np.shape(mask))}, "
                       f"expected the row shape {tuple(x.shape[:-1])} of the inputs")
    new = _accumulate_jit(self, x, None if mask is None else jnp.asarray(mask))
    if not bool(jnp.all(jnp.isfinite(new.xtx))):
      raise ValueError(f"calibration inputs for {name!r} contain NaN/inf")
    return new

  def __add__(self, other: "InputStats") -> "InputStats":
    if not isinstance(other, InputStats):
      return NotImplemented
    if self.xtx.shape != other.xtx.shape:
      raise ValueError(f"cannot merge statistics of K={self.k} and K={other.k} input features")
    return InputStats(self.xtx + other.xtx, self.abs_sum + other.abs_sum,
                      self.count + other.count)

  merge = __add__

  def psum(self, axis_name: Any) -> "InputStats":
    """Sums the statistics over a mesh axis (inside ``shard_map``/``pmap``)."""
    return jax.tree.map(lambda a: jax.lax.psum(a, axis_name), self)

  # ------------------------------------------------------------------ reading
  @property
  def k(self) -> int | None:
    """Input features ``K``."""
    return None if self.xtx is None else int(self.xtx.shape[0])

  @property
  def n(self) -> int:
    """Rows seen (as a Python int; needs concrete statistics)."""
    return int(self.count)

  @property
  def gram(self) -> jax.Array:
    """``X^T X / n`` ``[K, K]``."""
    return self.xtx / jnp.maximum(self.count, 1.0)

  @property
  def hessian(self) -> jax.Array:
    """GPTQ's ``H = 2 X^T X / n`` ``[K, K]``."""
    return 2.0 * self.gram

  @property
  def abs_mean(self) -> jax.Array:
    """AWQ's mean ``|x|`` per input channel ``[K]``."""
    return self.abs_sum / jnp.maximum(self.count, 1.0)

  def check(self, k: int, *, name: str = "") -> None:
    """Raises ValueError unless these statistics are non-empty and fit ``K = k`` inputs."""
    if self.xtx is None or float(self.count) <= 0:
      raise ValueError(f"calibration for {name!r} is empty (no rows)")
    if tuple(self.xtx.shape) != (self.k, self.k):
      raise ValueError(f"calibration X^T X for {name!r} must be square [K, K], got "
                       f"{tuple(self.xtx.shape)}")
    if self.k != k:
      raise ValueError(f"calibration for {name!r} has K={self.k} input features, but the weight "
                       f"has K={k} (inputs must be [..., {k}])")

  # ------------------------------------------------------------------ files
  def save(self, path: str | os.PathLike) -> None:
    """Writes the statistics to ``path`` (``.npz``, atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
      with open(tmp, "wb") as f:
        np.savez(f, xtx=np.asarray(self.xtx), abs_sum=np.asarray(self.abs_sum),
                 count=np.asarray(self.count))
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "InputStats":
    """Reads statistics written by :meth:`save`.

    Raises:
      FileNotFoundError: no such file. ValueError: missing or inconsistent arrays.
    """
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"{path}: no such statistics file")
    with np.load(path) as z:
      missing = sorted({"xtx", "abs_sum", "count"} - set(z.files))
      if missing:
        raise ValueError(f"{path}: not an InputStats file (missing {missing})")
      s = cls(jnp.asarray(z["xtx"], jnp.float32), jnp.asarray(z["abs_sum"], jnp.float32),
              jnp.asarray(z["count"], jnp.float32))
    k = s.xtx.shape[0] if s.xtx.ndim == 2 else -1
    if s.xtx.shape != (k, k) or s.abs_sum.shape != (k,) or s.count.shape != ():
      raise ValueError(f"{path}: inconsistent shapes xtx {s.xtx.shape}, abs_sum "
                       f"{s.abs_sum.shape}, count {s.count.shape}")
    return s

  # ------------------------------------------------------------------ deprecated
  def hessian_matrix(self) -> jax.Array:
    """Deprecated: ``X^T X / n``, use :attr:`gram` (or :attr:`hessian` for ``2 X^T X / n``)."""
    warnings.warn("InputStats.hessian_matrix() is deprecated: use .gram (X^T X / n) or .hessian "
                  "(2 X^T X / n)", DeprecationWarning, stacklevel=2)
    return self.gram

  def mean_abs(self) -> jax.Array:
    """Deprecated: use :attr:`abs_mean`."""
    warnings.warn("InputStats.mean_abs() is deprecated: use .abs_mean", DeprecationWarning,
                  stacklevel=2)
    return self.abs_mean

  def to_act_stats(self) -> "InputStats":
    """Deprecated: returns ``self`` (ActStats and LayerStats are now one type)."""
    return self


jax.tree_util.register_dataclass(InputStats, data_fields=["xtx", "abs_sum", "count"],
                                 meta_fields=[])


def accumulate(stats: InputStats | None, x: jax.Array, mask: jax.Array | None = None
               ) -> InputStats:
  """Pure ``jnp`` accumulation (no checks; use inside ``jit``/``scan``/``shard_map``).

  Args:
    stats: statistics so far (None starts from zero).
    x: inputs ``[..., K]``.
    mask: optional ``[...]`` row mask (``x.shape[:-1]``); 0 rows are skipped.

  Example:
    >>> import jax.numpy as jnp
    >>> s = accumulate(None, jnp.ones((2, 3, 4)), mask=jnp.array([[1, 1, 0], [1, 0, 0]]))
    >>> float(s.count), float(s.xtx[0, 0])
    (3.0, 3.0)
  """
  xtx, asum, n = _moments(x, mask)
  new = InputStats(xtx, asum, n)
  return new if stats is None else stats + new


_accumulate_jit = jax.jit(accumulate)


def _check_inputs(x: Any, *, name: str, k: int | None) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"calibration inputs for {name!r} must be [..., K] with at least one row "
                     f"axis, got shape {tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"calibration inputs for {name!r} must be floating, got {x.dtype}")
  if k is not None and x.shape[-1] != k:
    raise ValueError(f"calibration inputs for {name!r} have {x.shape[-1]} features, earlier "
                     f"batches had {k}")
  return x


def as_hessian(h: Any, *, k: int, name: str = "") -> jax.Array:
  """GPTQ's ``H = 2 X^T X / n`` from :class:`InputStats` or a ``[K, K]`` array, float32.

  Raises:
    ValueError: not ``[k, k]``.

  Example:
    >>> import jax.numpy as jnp
    >>> as_hessian(InputStats.from_inputs(jnp.ones((2, 3))), k=3)[0, 0].item()
    2.0
  """
  if isinstance(h, InputStats):
    h = h.hessian
  h = jnp.asarray(h)
  if h.shape != (k, k):
    where = f" for {name!r}" if name else ""
    raise ValueError(f"Hessian{where} has shape {tuple(h.shape)}, expected ({k}, {k}) "
                     f"(K = input features of the weight)")
  return h.astype(jnp.float32)


def accumulate_gram(acc: jax.Array | None, x: jax.Array) -> jax.Array:
  """``acc + x^T x`` for rows ``x[n, K]`` (``acc=None``: ``x^T x``), in ``x``'s dtype.

  The plain Gram of rows (no mask, no float32 cast, default matmul precision) for callers
  that want ``x``'s dtype; :class:`InputStats` / :func:`accumulate` is the float32, masked,
  highest-precision statistic of layer inputs (AlphaEdit's cache of preserved keys adds
  ``accumulate(None, keys).xtx``).

  Example:
    >>> import jax.numpy as jnp
    >>> g = accumulate_gram(None, jnp.array([[1., 2.]]))
    >>> accumulate_gram(g, jnp.array([[0., 1.]])).tolist()
    [[1.0, 2.0], [2.0, 5.0]]
  """
  g = x.T @ x
  return g if acc is None else acc + g
