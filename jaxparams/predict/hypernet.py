"""The graph hypernetwork: config, weights and parameter prediction for any model config.

``Hypernet`` is a pytree (its weights are leaves, its :class:`HypernetConfig` is static), so it
goes through ``jit``, ``grad`` and optax unchanged. :func:`params` predicts a full parameter tree
for a model config: trace its graph (:mod:`.graph`), embed the nodes (:mod:`.encoder`), decode
every leaf (:mod:`.decoders`) and normalise it as GHN-3/LoGAH do (matrices rescaled to standard
deviation ``init_std``, the models' ``initializer_range``; norm scales ``2 sigmoid(p / 2)``; biases
``tanh(p / 5)``), cast to the target's dtypes.

Example:
  >>> import jax, jaxparams as jp
  >>> hn = init(jax.random.key(0), HypernetConfig(hid=16, layers=1, heads=2, rank=4,
  ...                                             max_width=64))
  >>> cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...                             num_hidden_layers=1, num_attention_heads=2)
  >>> p = params(hn, cfg)
  >>> p['layers_0']['mlp']['up_proj']['kernel'].shape
  (16, 32)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree
from jaxparams.predict import decoders, encoder
from jaxparams.predict.graph import Graph, build

__all__ = ["HypernetConfig", "Hypernet", "init", "params", "params_from_graph", "raw_outputs",
           "leaves_from_raw", "decoder_params", "pad_arrays", "DEFAULT_BINS", "DECODERS"]

DECODERS = ("logah", "tiled")
DEFAULT_BINS = tuple(sorted(set(list(range(8, 64, 8)) + list(range(64, 512, 16)) +
                                list(range(512, 4097, 64)) + [1, 2, 4])))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HypernetConfig:
  """Hyperparameters of a graph hypernetwork.

  Attributes:
    decoder: ``'logah'`` (low-rank factors) or ``'tiled'`` (GHN-3 tiles).
    hid: node embedding size (README: 64 for GPT-2).
    layers: Graphormer layers (README: 3).
    heads: attention heads (README: 8).
    rank: LoGAH rank ``r`` (README: 32 for GPT-2).
    max_width: LoGAH ``ck``, the widest dimension predicted without tiling.
    tile: tiled decoder's tile size ``T``.
    bins: channel sizes with a shape-embedding row (nearest-bin lookup).
    seen: channel sizes met in training (:func:`jaxparams.predict.seen_sizes`); when given, a
      size is looked up at the nearest seen bin (in log scale), so that an unseen width reads a
      trained row instead of a never-updated one; empty: nearest of all ``bins``.
    init_std: standard deviation every predicted matrix is rescaled to.
  """
  decoder: str = "logah"
  hid: int = 32
  layers: int = 3
  heads: int = 4
  rank: int = 8
  max_width: int = 1024
  tile: int = 64
  bins: tuple[int, ...] = DEFAULT_BINS
  seen: tuple[int, ...] = ()
  init_std: float = 0.02

  def __post_init__(self):
    if self.decoder not in DECODERS:
      raise ValueError(f"HypernetConfig.decoder={self.decoder!r} unknown; valid: {list(DECODERS)}")
    for f in ("hid", "layers", "heads", "rank", "max_width", "tile"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"HypernetConfig.{f} must be >= 1, found {getattr(self, f)}")
    for f in ("bins", "seen"):
      object.__setattr__(self, f, tuple(int(x) for x in getattr(self, f)))

  @property
  def lookup_bins(self) -> tuple[int, ...]:
    """``bins`` with the rows never met in training pushed out of reach of the lookup."""
    if not self.seen:
      return self.bins
    seen = {min(self.bins, key=lambda b, c=c: abs(np.log(b) - np.log(c))) for c in self.seen}
    return tuple(b if b in seen else -(10 ** 9) for b in self.bins)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Hypernet:
  """A graph hypernetwork: ``weights`` (pytree leaves) and its ``config`` (static)."""
  weights: dict
  config: HypernetConfig = dataclasses.field(metadata=dict(static=True))


def init(key: jax.Array, config: HypernetConfig) -> Hypernet:
  """Fresh hypernetwork weights, a pure function of ``key`` (drawn with numpy: no compiles)."""
  rng = np.random.default_rng(_key_words(key))
  enc = encoder.init(rng, hid=config.hid, layers=config.layers, heads=config.heads,
                     n_bins=len(config.bins))
  if config.decoder == "logah":
    dec = decoders.init_lowrank(rng, hid=config.hid, rank=config.rank, ck=config.max_width)
  else:
    dec = decoders.init_tiled(rng, hid=config.hid, tile=config.tile)
  return Hypernet(jax.tree_util.tree_map(jnp.asarray, {"encoder": enc, "decoder": dec}), config)


def _key_words(key: jax.Array) -> list[int]:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return [int(x) for x in np.asarray(key).ravel()]


def decoder_params(hypernet: Hypernet) -> int:
  """Number of scalars in the decoder (the quantity LoGAH divides by ~100)."""
  return decoders.n_params(hypernet.weights["decoder"])


def pad_arrays(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
  """Pads graph arrays to ``n`` nodes (padded nodes are masked out of attention)."""
  m = len(arrays["types"])
  if n < m:
    raise ValueError(f"cannot pad a graph of {m} nodes to {n}")
  out = {k: np.pad(v, [(0, n - m)] * v.ndim) for k, v in arrays.items()}
  out["mask"] = np.arange(n) < m
  return out


def raw_outputs(weights: dict, arrays: dict[str, Any], config: HypernetConfig) -> dict:
  """Per-node raw decoder outputs for one (possibly padded) graph; pure, jit-able."""
  h = encoder.encode(weights["encoder"], arrays, heads=config.heads)
  if config.decoder == "logah":
    return decoders.apply_lowrank(weights["decoder"], h, rank=config.rank, ck=config.max_width)
  return decoders.apply_tiled(weights["decoder"], h, tile=config.tile)


def _normalise(x: jax.Array, is_matrix: bool, is_bias: bool, std: float) -> jax.Array:
  if is_matrix:
    # sqrt(var + eps^2), not std + eps: a dead (all-zero) output must not give NaN gradients
    return x * jax.lax.rsqrt(jnp.var(x) + 1e-14) * std
  return jnp.tanh(0.2 * x) if is_bias else 2.0 * jax.nn.sigmoid(0.5 * x)


def leaves_from_raw(raw: dict, graph: Graph, config: HypernetConfig) -> dict[str, jax.Array]:
  """Flat ``{path: array}`` of every leaf of ``graph``, normalised and in the target dtype."""
  kind = "lowrank" if config.decoder == "logah" else "tiled"
  out = {}
  for path, sd in graph.leaves.items():
    shape = tuple(sd.shape)
    flat_shape = (shape[0], 1) if len(shape) == 1 else (shape[0], int(np.prod(shape[1:])))
    is_bias = path.rsplit("/", 1)[-1] == "bias"
    x = decoders.leaf(raw, graph.leaf_node[path], flat_shape, is_bias, kind)
    x = _normalise(x, len(shape) > 1, is_bias, config.init_std)
    out[path] = x.reshape(shape).astype(sd.dtype)
  return out


def params_from_graph(hypernet: Hypernet, graph: Graph) -> Any:
  """The predicted parameter tree (nested dicts, as ``module.init(...)['params']``)."""
  arrays = encoder.graph_arrays(graph, hypernet.config.lookup_bins)
  cfg = hypernet.config
  flat = jax.jit(lambda w, a: leaves_from_raw(raw_outputs(w, a, cfg), graph, cfg))(
      hypernet.weights, arrays)
  return jtree.unflatten(flat)


def params(hypernet: Hypernet, config: Any, *, module: Any = None) -> Any:
  """Predicts every parameter of the model ``config`` (any width, depth, heads, FFN size).

  Args:
    hypernet: a trained (or fresh) :class:`Hypernet`.
    config: model config of any family ``jaxparams.models.model_for_config`` knows.
    module: optional Flax module (default: the family's module for ``config``).

  Returns:
    A parameter tree with exactly the paths, shapes and dtypes of ``module.init(...)['params']``,
    loadable by ``jp.models`` and writable with ``jp.models.to_hf``.
  """
  return params_from_graph(hypernet, build(config, module=module))
