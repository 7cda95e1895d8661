"""Graphormer node encoder of GHN-3/LoGAH as pure functions on a weight pytree.

Node features are an op-type embedding plus a shape embedding (one learned row per channel bin
for each of the node's two dimensions, GHN-3's shape encoder with nearest-bin lookup). The first
layer adds in/out-degree centrality embeddings and the embedding of the distance from the input
node, and turns the forward and backward shortest-path distances of every node pair (fixed
sinusoidal embeddings, as GHN-3) into a per-head attention bias through a two-layer MLP; that bias
is reused by every layer. Layers are pre-norm self-attention + GELU MLP (ratio 4), then a final
LayerNorm.

Example:
  >>> import jax, jaxparams as jp
  >>> from jaxparams.predict import graph, encoder
  >>> cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...                             num_hidden_layers=1, num_attention_heads=2)
  >>> arrays = encoder.graph_arrays(graph.build(cfg), bins=(8, 16, 32))
  >>> import numpy as np
  >>> w = encoder.init(np.random.default_rng(0), hid=16, layers=2, heads=2, n_bins=3)
  >>> encoder.encode(w, arrays, heads=2).shape
  (22, 16)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.predict.graph import OP_TYPES, Graph

__all__ = ["init", "encode", "graph_arrays", "MAX_DEGREE", "MAX_DIST"]

MAX_DEGREE = 32
MAX_DIST = 255


def _dense(rng: np.random.Generator, n_in: int, n_out: int) -> dict:
  return {"w": (rng.standard_normal((n_in, n_out)) / math.sqrt(n_in)).astype(np.float32),
          "b": np.zeros((n_out,), np.float32)}


def _ln(n: int) -> dict:
  return {"g": np.ones((n,), np.float32), "b": np.zeros((n,), np.float32)}


def _apply_ln(p: dict, x: jax.Array) -> jax.Array:
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-5) * p["g"] + p["b"]


def _lin(p: dict, x: jax.Array) -> jax.Array:
  return x @ p["w"] + p["b"]


def init(rng: np.random.Generator, *, hid: int, layers: int, heads: int, n_bins: int) -> dict:
  """Encoder weights (a plain dict pytree of numpy arrays)."""
  if hid % heads or hid % 2:
    raise ValueError(f"hid ({hid}) must be even and a multiple of heads ({heads})")
  emb = lambda n, d: (np.clip(rng.standard_normal((n, d)), -2, 2) * d ** -0.5).astype(np.float32)
  w = {"type": emb(len(OP_TYPES), hid), "channel": emb(n_bins + 1, hid // 2),
       "deg_in": emb(MAX_DEGREE + 1, hid), "deg_out": emb(MAX_DEGREE + 1, hid),
       "input_dist": emb(MAX_DIST + 1, hid),
       "edge1": _dense(rng, 2 * hid, hid), "edge2": _dense(rng, hid, heads),
       "final_ln": _ln(hid), "layers": []}
  for _ in range(layers):
    w["layers"].append({"ln1": _ln(hid), "qkv": _dense(rng, hid, 3 * hid),
                        "out": _dense(rng, hid, hid), "ln2": _ln(hid),
                        "ff1": _dense(rng, hid, 4 * hid), "ff2": _dense(rng, 4 * hid, hid)})
  return w


def _bin_index(c: int, bins: tuple[int, ...]) -> int:
  if c <= 0:
    return len(bins)  # the 'no shape' row (op nodes)
  return int(np.argmin([abs(np.log(b) - np.log(c)) if b > 0 else np.inf for b in bins]))


def graph_arrays(g: Graph, bins: tuple[int, ...]) -> dict[str, np.ndarray]:
  """The integer arrays the encoder reads from a graph (host numpy; jit-friendly shapes).

  ``bins`` are the channel sizes with an embedding row; a size is looked up at its nearest bin
  in log scale (sizes beyond the largest bin read the largest, as GHN-3 does for unseen shapes;
  bins <= 0 are never chosen).
  """
  deg_in, deg_out = g.degrees()
  types = [OP_TYPES.index(t) if t in OP_TYPES else OP_TYPES.index("other") for t in g.node_types]
  shapes = np.array([[_bin_index(d, bins) for d in g.node_shape(i)] for i in range(g.n_nodes)],
                    np.int32)
  return {"types": np.array(types, np.int32), "shapes": shapes,
          "deg_in": np.minimum(deg_in, MAX_DEGREE).astype(np.int32),
          "deg_out": np.minimum(deg_out, MAX_DEGREE).astype(np.int32),
          "input_dist": np.minimum(g.spd[0], MAX_DIST).astype(np.int32),
          "spd": g.spd.astype(np.int32)}


def _sinusoid(n: int, d: int) -> jax.Array:
  pos = np.arange(n)[:, None]
  div = np.exp(np.arange(0, d, 2) * (-math.log(10000.0) / d))
  pe = np.zeros((n, d), np.float32)
  pe[:, 0::2], pe[:, 1::2] = np.sin(pos * div), np.cos(pos * div)
  pe[0] = 0.0
  return jnp.asarray(pe)


def encode(w: dict, arrays: dict[str, Any], *, heads: int) -> jax.Array:
  """Node embeddings ``[N, hid]`` of one graph (``arrays['mask']``, if given, marks real nodes)."""
  hid = w["type"].shape[1]
  x = w["type"][arrays["types"]]
  x = x + jnp.concatenate([w["channel"][arrays["shapes"][:, 0]],
                           w["channel"][arrays["shapes"][:, 1]]], -1)
  x = x + w["deg_in"][arrays["deg_in"]] + w["deg_out"][arrays["deg_out"]]
  x = x + w["input_dist"][arrays["input_dist"]]
  spd = jnp.asarray(arrays["spd"])
  pe = _sinusoid(MAX_DIST + 3, hid)
  e = jnp.concatenate([pe[spd + 2], pe[spd.T + 2]], -1)  # forward / backward distances
  bias = _lin(w["edge2"], jax.nn.relu(_lin(w["edge1"], e)))  # [N, N, heads]
  bias = jnp.moveaxis(bias, -1, 0)
  if "mask" in arrays:  # padded nodes: never attended to, their features zeroed
    keep = jnp.asarray(arrays["mask"])
    bias = jnp.where(keep[None, None, :], bias, -1e9)
    x = x * keep[:, None]
  n = x.shape[0]
  dh = hid // heads
  for lw in w["layers"]:
    q, k, v = jnp.split(_lin(lw["qkv"], _apply_ln(lw["ln1"], x)), 3, -1)
    q, k, v = (t.reshape(n, heads, dh).transpose(1, 0, 2) for t in (q, k, v))
    att = jax.nn.softmax(q @ k.transpose(0, 2, 1) * dh ** -0.5 + bias, -1)
    x = x + _lin(lw["out"], (att @ v).transpose(1, 0, 2).reshape(n, hid))
    x = x + _lin(lw["ff2"], jax.nn.gelu(_lin(lw["ff1"], _apply_ln(lw["ln2"], x))))
  return _apply_ln(w["final_ln"], x)
