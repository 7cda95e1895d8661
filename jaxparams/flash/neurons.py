"""The DRAM side of LLM in a flash: a preallocated neuron matrix with swap-on-delete, and windowing.

:class:`NeuronMatrix` holds up to ``capacity`` neurons of one FFN layer, each a
row ``[gate | up | down]`` of ``3H`` elements, in rows ``0..n-1`` of one
preallocated array (never reallocated). Deleting neurons moves the last rows
into the holes (swap-on-delete, one vectorised copy per token), adding neurons
appends rows at ``n``; :meth:`NeuronMatrix.replace` deletes and adds in one step,
giving the new neurons the deleted neurons' rows first, so that only the surplus of
holes is compacted and a token's reads land in place (no row is copied twice).
:class:`Window` keeps, per neuron, the last token at which it was predicted active; the neurons to keep are those active in the last
``k`` tokens, so only the increment is read.

Example:
  >>> import numpy as np
  >>> m = NeuronMatrix(capacity=4, num_neurons=10, row=3, dtype=np.float32)
  >>> rows = m.add(np.array([2, 5, 7]))
  >>> m.rows[rows] = np.arange(9, dtype=np.float32).reshape(3, 3)
  >>> m.remove(np.array([2]))
  >>> m.n, m.ids[:2].tolist(), m.rows[0].tolist()
  (2, [7, 5], [6.0, 7.0, 8.0])
"""

from __future__ import annotations

import numpy as np

from jaxparams.flash.reads import aligned_empty

__all__ = ["NeuronMatrix", "Window"]


class NeuronMatrix:
  """Preallocated ``[capacity, row]`` neuron rows of one layer (see the module docstring)."""

  def __init__(self, *, capacity: int, num_neurons: int, row: int, dtype):
    if capacity < 1:
      raise ValueError(f"NeuronMatrix: capacity must be >= 1, got {capacity} (memory budget too "
                       "small for one neuron per layer)")
    self.capacity = int(capacity)
    self.rows = aligned_empty((self.capacity, row), dtype)
    self.ids = np.full(self.capacity, -1, np.int64)     # row -> neuron
    self.pos = np.full(num_neurons, -1, np.int64)       # neuron -> row (-1: not loaded)
    self.n = 0

  @property
  def nbytes(self) -> int:
    return int(self.rows.nbytes + self.ids.nbytes + self.pos.nbytes)

  def loaded(self) -> np.ndarray:
    """The neurons held, in row order."""
    return self.ids[:self.n]

  def remove(self, neurons: np.ndarray) -> None:
    """Deletes loaded ``neurons``: the last rows move into their holes (no reallocation)."""
    neurons = np.asarray(neurons, np.int64)
    if neurons.size == 0:
      return
    holes = self.pos[neurons]
    if (holes < 0).any():
      raise ValueError(f"NeuronMatrix.remove: neurons {neurons[holes < 0][:4].tolist()} are not "
                       "loaded")
    self.pos[neurons] = -1
    self._compact(holes)

  def _compact(self, holes: np.ndarray) -> None:
    """Swap-on-delete: live rows beyond the new end move into ``holes`` (rows freed, < n)."""
    n_new = self.n - holes.size
    tail = np.arange(n_new, self.n)
    dead = np.zeros(self.n, bool)
    dead[holes] = True
    movers = tail[~dead[tail]]            # live rows beyond the new end
    targets = np.sort(holes[holes < n_new])  # holes inside the new range
    if movers.size:
      self.rows[targets] = self.rows[movers]
      self.ids[targets] = self.ids[movers]
      self.pos[self.ids[targets]] = targets
    self.ids[n_new:self.n] = -1
    self.n = n_new

  def replace(self, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Deletes loaded ``old`` and reserves rows for ``new``; returns ``new``'s rows (to fill).

    The new neurons take the deleted neurons' rows (lowest first), then rows from ``n`` on;
    holes left over are closed by swap-on-delete. The rows need not be consecutive.

    Example:
      >>> m = NeuronMatrix(capacity=4, num_neurons=10, row=1, dtype=np.float32)
      >>> m.add(np.array([1, 2, 3])).tolist()
      [0, 1, 2]
      >>> m.replace(np.array([1, 3]), np.array([6, 7, 8])).tolist()
      [0, 2, 3]
      >>> m.loaded().tolist()
      [6, 2, 7, 8]
    """
    old = np.asarray(old, np.int64)
    new = np.asarray(new, np.int64)
    holes = np.sort(self.pos[old])
    if (holes < 0).any():
      raise ValueError(f"NeuronMatrix.replace: neurons {old[self.pos[old] < 0][:4].tolist()} are "
                       "not loaded")
    if (self.pos[new] >= 0).any() or np.unique(new).size != new.size:
      raise ValueError(f"NeuronMatrix.replace: new neurons must be distinct and not loaded, found "
                       f"{new[self.pos[new] >= 0][:4].tolist()} loaded")
    if self.n - old.size + new.size > self.capacity:
      raise ValueError(f"NeuronMatrix.replace: {self.n} - {old.size} + {new.size} neurons exceed "
                       f"the capacity {self.capacity}")
    k = min(old.size, new.size)
    self.pos[old] = -1
    self.ids[holes[:k]] = new[:k]
    self.pos[new[:k]] = holes[:k]
    if old.size > k:
      self._compact(holes[k:])  # may move some of the new neurons' rows: read pos afterwards
    elif new.size > k:
      self.add(new[k:])
    return self.pos[new].copy()

  def add(self, neurons: np.ndarray) -> np.ndarray:
    """Reserves rows ``n..n+m-1`` for new ``neurons`` (in order); returns the rows to fill."""
    neurons = np.asarray(neurons, np.int64)
    if self.n + neurons.size > self.capacity:
      raise ValueError(f"NeuronMatrix.add: {self.n} + {neurons.size} neurons exceed the capacity "
                       f"{self.capacity}")
    rows = np.arange(self.n, self.n + neurons.size)
    self.ids[rows] = neurons
    self.pos[neurons] = rows
    self.n += neurons.size
    return rows


class Window:
  """Neurons predicted active in the last ``k`` tokens (``k=0``: only the current token)."""

  def __init__(self, num_neurons: int, k: int):
    if k < 0:
      raise ValueError(f"Window: k must be >= 0, got {k}")
    self.k = int(k)
    self.last = np.full(num_neurons, -(1 << 40), np.int64)

  def update(self, t: int, active: np.ndarray) -> np.ndarray:
    """Marks ``active`` at token ``t``; returns the boolean mask of neurons to keep."""
    self.last[active] = t
    return self.last > t - max(self.k, 1)
