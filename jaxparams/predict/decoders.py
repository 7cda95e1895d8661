"""Weight decoders of graph hypernetworks: LoGAH's low-rank decoder and GHN-3's tiled decoder.

Both map node embeddings ``h [N, hid]`` to raw per-node outputs (pure functions on weight dicts);
:func:`leaf` then cuts one parameter of any shape out of a node's output.

* **low-rank** (LoGAH, ``ConvDecoder3LoRA``): an MLP ``hid -> 4 hid -> 8 hid -> 2 r^2`` gives a
  ``[2r, r]`` matrix; ReLU, a linear ``r -> ck`` along its last axis, and the ``[2r, ck]`` result
  read as ``[2 ck, r]`` holds the factors ``A, B`` (``[ck, r]`` each). A ``[d0, d1]`` weight is
  ``A[:d0] @ B[:d1].T`` (rank <= r) for any ``d0, d1 <= ck``; a vector of size ``c`` is
  ``(A[:2c] @ B[0]).reshape(2, c)`` (row 0: weights/scales, row 1: biases). Beyond ``ck`` the
  result is tiled, as in the reference. Parameters: ``O(hid^2 + hid r^2 + r ck)``.
* **tiled** (GHN-3, ``ConvDecoder3`` on 1x1 weights): an MLP ``hid -> 4 hid -> 8 hid -> T^2``
  gives one ``[T, T]`` tile repeated along both axes and cropped, and a vector MLP
  ``hid -> 2 hid -> 2T`` gives ``[2, T]`` vectors, tiled. Parameters: ``O(hid T^2)``; reaching width
  ``d`` without repeats needs ``T = d``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import numpy as np
  >>> w = init_lowrank(np.random.default_rng(0), hid=8, rank=2, ck=16)
  >>> raw = apply_lowrank(w, jnp.ones((3, 8)), rank=2, ck=16)
  >>> raw['A'].shape, int(jnp.linalg.matrix_rank(leaf(raw, 1, (12, 10), False, 'lowrank')))
  ((3, 16, 2), 2)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["init_lowrank", "apply_lowrank", "init_tiled", "apply_tiled", "leaf", "tile",
           "n_params", "lowrank_size", "tiled_size"]


def _dense(rng: np.random.Generator, n_in: int, n_out: int, scale: float = 1.0) -> dict:
  return {"w": (rng.standard_normal((n_in, n_out)) * scale / math.sqrt(n_in)).astype(np.float32),
          "b": np.zeros((n_out,), np.float32)}


def _mlp(ws: list, x: jax.Array) -> jax.Array:
  for i, p in enumerate(ws):
    x = x @ p["w"] + p["b"]
    if i < len(ws) - 1:
      x = jax.nn.relu(x)
  return x


def n_params(w) -> int:
  """Number of scalars in a weight pytree."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(w)))


def _mlp_size(sizes) -> int:
  return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def lowrank_size(*, hid: int, rank: int, ck: int) -> int:
  """Scalars in :func:`init_lowrank`'s weights (without building them)."""
  return _mlp_size([hid, 4 * hid, 8 * hid, 2 * rank * rank]) + rank * ck + ck


def tiled_size(*, hid: int, tile: int) -> int:
  """Scalars in :func:`init_tiled`'s weights (without building them)."""
  return _mlp_size([hid, 4 * hid, 8 * hid, tile * tile]) + _mlp_size([hid, 2 * hid, 2 * tile])


def init_lowrank(rng: np.random.Generator, *, hid: int, rank: int, ck: int) -> dict:
  """Weights of the low-rank decoder (the last MLP layer at 1/5 scale, GHN-3's ``_init_small``)."""
  return {"mlp": [_dense(rng, hid, 4 * hid), _dense(rng, 4 * hid, 8 * hid),
                  _dense(rng, 8 * hid, 2 * rank * rank, 0.2)],
          "l2": _dense(rng, rank, ck)}


def apply_lowrank(w: dict, h: jax.Array, *, rank: int, ck: int) -> dict:
  """``{'A': [N, ck, r], 'B': [N, ck, r]}`` for node embeddings ``h [N, hid]``."""
  n = h.shape[0]
  x = _mlp(w["mlp"], h).reshape(n, 2 * rank, rank)
  x = jax.nn.relu(x) @ w["l2"]["w"] + w["l2"]["b"]  # [N, 2r, ck]
  x = x.reshape(n, 2 * ck, rank)  # the reference's reinterpretation of the same memory
  return {"A": x[:, :ck], "B": x[:, ck:]}


def init_tiled(rng: np.random.Generator, *, hid: int, tile: int) -> dict:
  """Weights of the tiled decoder and its vector decoder."""
  return {"mlp": [_dense(rng, hid, 4 * hid), _dense(rng, 4 * hid, 8 * hid),
                  _dense(rng, 8 * hid, tile * tile, 0.2)],
          "mlp_1d": [_dense(rng, hid, 2 * hid), _dense(rng, 2 * hid, 2 * tile, 0.2)]}


def apply_tiled(w: dict, h: jax.Array, *, tile: int) -> dict:
  """``{'W': [N, T, T], 'v': [N, 2, T]}`` for node embeddings ``h [N, hid]``."""
  n = h.shape[0]
  return {"W": _mlp(w["mlp"], h).reshape(n, tile, tile),
          "v": _mlp(w["mlp_1d"], h).reshape(n, 2, tile)}


def tile(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Repeats ``x`` along every axis to cover ``shape``, then crops (GHN's ``_tile_params``)."""
  reps = [-(-t // s) for t, s in zip(shape, x.shape)]
  x = jnp.tile(x, reps)
  return x[tuple(slice(0, t) for t in shape)]


def leaf(raw: dict, node: int, shape: tuple[int, int], is_bias: bool, kind: str) -> jax.Array:
  """The un-normalised tensor of one parameter from node ``node``'s raw decoder output.

  Args:
    raw: output of :func:`apply_lowrank` or :func:`apply_tiled`.
    node: node index.
    shape: ``(d0, d1)`` of a matrix, or ``(c, 1)`` for a vector (returned as ``[c]``).
    is_bias: for vectors, take the bias row (1) instead of the weight row (0).
    kind: ``'lowrank'`` or ``'tiled'``.
  """
  d0, d1 = shape
  if kind == "lowrank":
    a, b = raw["A"][node], raw["B"][node]
    ck = a.shape[0]
    if d1 == 1:
      c2 = min(2 * d0, ck - ck % 2)
      v = (a[:c2] @ b[0]).reshape(2, c2 // 2)[int(is_bias)]
      return tile(v, (d0,))
    w = a[:min(d0, ck)] @ b[:min(d1, ck)].T
    return w if (d0 <= ck and d1 <= ck) else tile(w, (d0, d1))
  if kind == "tiled":
    if d1 == 1:
      return tile(raw["v"][node, int(is_bias)], (d0,))
    return tile(raw["W"][node], (d0, d1))
  raise ValueError(f"decoder kind {kind!r} unknown; valid: 'lowrank', 'tiled'")
