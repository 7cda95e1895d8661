"""A checkpoint's tensors one at a time, as :class:`~jaxparams.tree.summary.LeafStats` rows.

From the headers alone (name, shape, dtype, parameters, bytes), or reading each tensor in turn
for its moments (``stats=True``: mean, std, abs-max, zeros, generalized-Gaussian shape). What
``jaxparams inspect`` prints; a notebook can tabulate it (``tree.summary.Summary(tuple(rows))``).

Example:
  >>> import numpy as np, tempfile, os
  >>> from jaxparams.io import save_safetensors
  >>> d = os.path.join(tempfile.mkdtemp(), 'c')
  >>> save_safetensors({'a': np.zeros((2, 3), np.float32), 'b': np.ones(4, np.float32)}, d)
  >>> [(r.path, r.shape, r.params) for r in checkpoint_rows(d)]
  [('a', (2, 3), 6), ('b', (4,), 4)]
  >>> [r.mean for r in checkpoint_rows(d, stats=True, where='b')]
  [1.0]
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterator

from jaxparams.io.any_checkpoint import is_orbax_dir, load_any
from jaxparams.io.safetensors_reader import open_checkpoint
from jaxparams.tree.select import Selector, select
from jaxparams.tree.summary import LeafStats, leaf_stats

__all__ = ["checkpoint_rows"]


def _select(names: list[str], where: Selector) -> list[str]:
  return names if where is None else select({n: None for n in names}, where, flat=True)


def _row(name: str, shape: tuple[int, ...], dtype: str, nbytes: int, array) -> LeafStats:
  row = LeafStats(name, tuple(shape), dtype, math.prod(shape), nbytes)
  if array is None:
    return row
  st = leaf_stats(name, array)
  return dataclasses.replace(row, mean=st.mean, std=st.std, absmax=st.absmax, zeros=st.zeros,
                             gg_shape=st.gg_shape)


def checkpoint_rows(path: str | Path, *, stats: bool = False, where: Selector = None
                    ) -> Iterator[LeafStats]:
  """One :class:`LeafStats` per tensor of ``path``, in file order, as they are read.

  Args:
    path: a ``.safetensors`` file, an HF folder, a sharded index or an orbax folder.
    stats: read each tensor (one at a time) for its moments; else headers only.
    where: a ``where=`` selector of tensor names (glob, ``'re:...'``, ...).

  Raises:
    FileNotFoundError: ``path`` is missing.
    ValueError: a pickle checkpoint, a bad header, a selector matching nothing.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file or folder.")
  if is_orbax_dir(path):
    flat, _ = load_any(path)
    for n in _select(list(flat), where):
      a = flat[n]
      yield _row(n, tuple(a.shape), str(a.dtype), int(a.nbytes), a if stats else None)
    return
  with open_checkpoint(path) as ck:
    for n in _select(ck.names(), where):
      s = ck.spec(n)
      yield _row(n, s.shape, str(s.dtype), s.nbytes, ck.read(n) if stats else None)
