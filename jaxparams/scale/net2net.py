"""Net2Net: function-preserving widening and deepening (Chen, Goodfellow, Shlens, ICLR 2016).

**Net2WiderNet** grows a hidden layer from n to q units with a mapping
g(j) = j for j < n and g(j) ∈ {0..n-1} for j ≥ n (random with a ``key``,
round-robin ``j mod n`` without). Incoming weights and biases of unit j are
copied from unit g(j); outgoing weights of unit j are the rows of unit g(j)
divided by the replication count |{x : g(x) = g(j)}|. Since every copy
computes the same activation, the next layer sees Σ_copies h·W/c = h·W:
the function is unchanged for any elementwise activation. For SwiGLU the
gated product silu(g)·u of a unit is replicated as a whole, so copying the
gate and up columns and splitting the down rows is exact too. Attention heads
are units of the same kind: a copied head (with its kv head, for GQA) yields
the same head output and the o_proj rows are split.

**Net2DeeperNet** inserts a layer initialised to the identity. For a plain
MLP this needs φ(I·φ(v)) = φ(v) (true for ReLU, ReLU6, identity; false for
tanh, sigmoid, GeLU, SiLU → ValueError). For the pre-norm Llama block the
residual stream makes it activation-free: a block whose ``o_proj`` and
``down_proj`` are zero returns its input.

``noise > 0`` adds symmetry-breaking noise (relative to each tensor's std) to
the copied incoming weights; the result is then only approximately
function-preserving. Default 0: exact up to float rounding.

Example:
  >>> import jax, jax.numpy as jnp
  >>> params = {'Dense_0': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)},
  ...           'Dense_1': {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros(2)}}
  >>> wide = net2wider_mlp(params, layer='Dense_0', new_width=6)
  >>> wide['Dense_0']['kernel'].shape, wide['Dense_1']['kernel'].shape
  ((3, 6), (6, 2))
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEEPER_ACTIVATIONS", "deepen_llama", "mlp_features", "net2deeper_mlp", "net2wider_mlp", "widen_llama_ffn",
    "widen_llama_heads", "wider_mapping",
]

DEEPER_ACTIVATIONS = ("relu", "relu6", "identity", "linear", "hard_tanh")
"""Activations with φ(φ(v)) = φ(v): the ones Net2DeeperNet can insert an identity layer after."""


def wider_mapping(n: int, q: int, key: jax.Array | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Net2WiderNet unit mapping g and replication counts.

  Args:
    n: current number of units.
    q: new number of units (``q >= n``).
    key: PRNG key for the random mapping of the new units; ``None`` = round robin.

  Returns:
    ``(g, counts)``: int arrays ``[q]``; ``g[j]`` is the source unit of new unit
    j and ``counts[j]`` = |{x : g[x] = g[j]}|.

  Raises:
    ValueError: if ``q < n`` (cannot preserve the function by shrinking).

  Example:
    >>> g, c = wider_mapping(2, 5)
    >>> g.tolist(), c.tolist()
    ([0, 1, 0, 1, 0], [3, 2, 3, 2, 3])
  """
  if n <= 0:
    raise ValueError(f"wider_mapping: current width must be positive, found {n}")
  if q < n:
    raise ValueError(f"Net2WiderNet cannot shrink: new width {q} < current width {n}")
  if key is None:
    extra = np.arange(q - n) % n
  else:
    extra = _host_rng(key).integers(0, n, q - n)
  g = np.concatenate([np.arange(n), extra]).astype(np.int32)
  counts = np.bincount(g, minlength=n)[g]
  return g, counts


def _host_rng(key: jax.Array) -> np.random.Generator:
  """A numpy generator seeded by a JAX key (no device compile for a few host integers)."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def _noisy(x: jax.Array, n_old: int, axis: int, noise: float, key: jax.Array | None) -> jax.Array:
  """Adds relative noise to the slices ``n_old:`` (the new copies) along ``axis``."""
  if noise <= 0 or x.shape[axis] == n_old:
    return x
  if key is None:
    raise ValueError("Net2WiderNet: noise > 0 needs a PRNG key")
  scale = noise * jnp.std(x.astype(jnp.float32))
  eps = scale * jax.random.normal(key, x.shape, jnp.float32)
  keep = (jnp.arange(x.shape[axis]) >= n_old).reshape([-1 if a == axis % x.ndim else 1
                                                       for a in range(x.ndim)])
  return (x.astype(jnp.float32) + jnp.where(keep, eps, 0.0)).astype(x.dtype)


def _take(x: jax.Array, idx: np.ndarray, axis: int) -> jax.Array:
  return jnp.take(jnp.asarray(x), jnp.asarray(idx), axis=axis)


def _split(x: jax.Array, g: np.ndarray, counts: np.ndarray, axis: int) -> jax.Array:
  """Outgoing weights: rows g along ``axis`` divided by their replication count."""
  x = jnp.asarray(x)
  shape = [1] * x.ndim
  shape[axis] = -1
  c = jnp.asarray(counts, jnp.float32).reshape(shape)
  return (_take(x, g, axis).astype(jnp.float32) / c).astype(x.dtype)


def mlp_features(params: Mapping[str, Any], layer_names: Sequence[str] | None = None
                 ) -> tuple[int, ...]:
  """Output widths of a Dense stack in order: the ``features`` of `jaxparams.models.MLP`.

  Example:
    >>> import jax.numpy as jnp
    >>> mlp_features({'layers_0': {'kernel': jnp.ones((3, 5))}, 'layers_1': {'kernel': jnp.ones((5, 2))}})
    (5, 2)
  """
  return tuple(int(params[n]["kernel"].shape[-1]) for n in _layer_names(params, layer_names))


def _layer_names(params: Mapping[str, Any], layer_names: Sequence[str] | None) -> list[str]:
  if layer_names is not None:
    missing = [n for n in layer_names if n not in params]
    if missing:
      raise ValueError(f"net2net: layers {missing} not in params (keys: {sorted(params)})")
    return list(layer_names)
  names = [k for k in params if isinstance(params[k], Mapping) and "kernel" in params[k]]

  def order(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else -1, name)

  names.sort(key=order)
  if not names:
    raise ValueError(f"net2net: no Dense layers (dicts with 'kernel') in params (keys: {sorted(params)})")
  return names


def net2wider_mlp(params: Mapping[str, Any], *, layer: str | int, new_width: int,
                  key: jax.Array | None = None, noise: float = 0.0,
                  layer_names: Sequence[str] | None = None) -> dict[str, Any]:
  """Net2WiderNet on a stack of Dense layers (flax ``{'kernel' [in,out], 'bias'}`` dicts).

  Widens the output units of ``layer`` and the matching input rows of the next
  layer; any elementwise activation between them keeps the function.

  Args:
    params: ``{name: {'kernel': [in, out], 'bias': [out]?}, ...}``; other entries
      (norms, embeddings) are passed through unchanged.
    layer: name or index (into the ordered layers) of the layer to widen; it
      must not be the last layer.
    new_width: new number of output units (``>=`` the current one).
    key: PRNG key for the random mapping (and noise); ``None`` = round robin.
    noise: relative std of symmetry-breaking noise on the new incoming
      weights (0 = exact).
    layer_names: the layer order (default: Dense-like keys sorted by trailing index).

  Returns:
    The widened params (a new dict).

  Raises:
    ValueError: shrinking, last layer, unknown layer, shape mismatch.

  Example:
    >>> import jax.numpy as jnp
    >>> p = {'Dense_0': {'kernel': jnp.eye(2)}, 'Dense_1': {'kernel': jnp.ones((2, 1))}}
    >>> net2wider_mlp(p, layer=0, new_width=3)['Dense_1']['kernel'].tolist()
    [[0.5], [1.0], [0.5]]
  """
  names = _layer_names(params, layer_names)
  name = names[layer] if isinstance(layer, int) else layer
  if name not in names:
    raise ValueError(f"net2wider_mlp: unknown layer {layer!r}; layers: {names}")
  i = names.index(name)
  if i == len(names) - 1:
    raise ValueError(f"net2wider_mlp: {name!r} is the output layer; widening it changes the output "
                     f"shape (widen a hidden layer of {names[:-1]})")
  nxt = names[i + 1]
  w_in, w_out = params[name]["kernel"], params[nxt]["kernel"]
  n = w_in.shape[-1]
  if w_out.shape[0] != n:
    raise ValueError(f"net2wider_mlp: {nxt}/kernel has {w_out.shape[0]} input rows but {name}/kernel "
                     f"has {n} outputs")
  map_key, noise_key = (None, None) if key is None else jax.random.split(key)
  g, counts = wider_mapping(n, int(new_width), map_key)

  def body(first, second, noise_key):
    layer_in = dict(first)
    layer_in["kernel"] = _noisy(_take(first["kernel"], g, 1), n, 1, noise, noise_key)
    if "bias" in layer_in:
      layer_in["bias"] = _take(layer_in["bias"], g, 0)
    layer_out = dict(second)
    layer_out["kernel"] = _split(second["kernel"], g, counts, 0)
    return layer_in, layer_out

  out = dict(params)
  layer_in, layer_out = jax.jit(body)(params[name], params[nxt], noise_key)
  out[name], out[nxt] = layer_in, layer_out
  return out


def net2deeper_mlp(params: Mapping[str, Any], *, after: str | int, activation: str,
                   name: str | None = None, layer_names: Sequence[str] | None = None
                   ) -> tuple[dict[str, Any], list[str]]:
  """Net2DeeperNet: insert an identity Dense layer after ``after``.

  The new layer computes ``φ(I·h + 0)`` on ``h = φ(...)``, equal to ``h`` only
  when φ is idempotent (``DEEPER_ACTIVATIONS``).

  Args:
    params: Dense stack as in `net2wider_mlp`.
    after: name or index of the layer after which to insert (must be a hidden
      layer, i.e. followed by the activation).
    activation: the MLP's hidden activation name.
    name: name of the new layer (default: when all layers are ``<prefix><int>``
      -- ``layers_0`` of `jaxparams.models.MLP`, ``Dense_0`` of flax -- they are
      renumbered in the new order, else ``<after>_identity``).
    layer_names: layer order (default: inferred).

  Returns:
    ``(new_params, new_layer_order)``.

  Raises:
    ValueError: for an activation where the identity layer does not preserve
      the function, or an unknown/last layer.

  Example:
    >>> import jax.numpy as jnp
    >>> p = {'Dense_0': {'kernel': jnp.ones((2, 3))}, 'Dense_1': {'kernel': jnp.ones((3, 1))}}
    >>> p2, order = net2deeper_mlp(p, after=0, activation='relu')
    >>> order, p2['Dense_1']['kernel'].tolist()
    (['Dense_0', 'Dense_1', 'Dense_2'], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  """
  act = activation.lower()
  if act not in DEEPER_ACTIVATIONS:
    raise ValueError(f"Net2DeeperNet needs an idempotent activation (φ(φ(v)) = φ(v)) for an identity "
                     f"layer to preserve the function; {activation!r} is not one. Supported: "
                     f"{', '.join(DEEPER_ACTIVATIONS)}")
  names = _layer_names(params, layer_names)
  prev = names[after] if isinstance(after, int) else after
  if prev not in names:
    raise ValueError(f"net2deeper_mlp: unknown layer {after!r}; layers: {names}")
  i = names.index(prev)
  if i == len(names) - 1:
    raise ValueError(f"net2deeper_mlp: {prev!r} is the output layer (no activation after it); "
                     f"insert after one of {names[:-1]}")
  width = params[prev]["kernel"].shape[-1]
  dtype = params[prev]["kernel"].dtype
  new_layer = {"kernel": jnp.eye(width, dtype=dtype)}
  if "bias" in params[prev]:
    new_layer["bias"] = jnp.zeros((width,), dtype)
  rest = {k: v for k, v in params.items() if k not in names}
  layers = [params[n] for n in names]
  layers.insert(i + 1, new_layer)
  prefixes = {m.group(1) if (m := re.fullmatch(r"(.*?)(\d+)", n)) else None for n in names}
  if name is None and len(prefixes) == 1 and None not in prefixes:
    prefix = prefixes.pop()                      # e.g. 'layers_' or 'Dense_': renumber
    order = [f"{prefix}{j}" for j in range(len(layers))]
  else:
    order = list(names)
    order.insert(i + 1, name or f"{prev}_identity")
    if len(set(order)) != len(order):
      raise ValueError(f"net2deeper_mlp: new layer name {order[i + 1]!r} already exists")
  out = dict(rest)
  out.update(dict(zip(order, layers)))
  return out, order


# ----------------------------------------------------------------------------- Llama


def _llama_layers(params: Mapping[str, Any], config: Any) -> list[str]:
  names = [f"layers_{i}" for i in range(config.num_hidden_layers)]
  missing = [n for n in names if n not in params]
  if missing:
    raise ValueError(f"Llama params do not match config.num_hidden_layers="
                     f"{config.num_hidden_layers}: missing {missing[:3]}")
  return names


def _with_bias(module: Mapping[str, Any], fn_kernel, fn_bias=None) -> dict[str, Any]:
  out = dict(module)
  out["kernel"] = fn_kernel(module["kernel"])
  if "bias" in module and fn_bias is not None:
    out["bias"] = fn_bias(module["bias"])
  return out


def widen_llama_ffn(params: Mapping[str, Any], config: Any, new_intermediate_size: int,
                    key: jax.Array | None = None, *, noise: float = 0.0
                    ) -> tuple[dict[str, Any], Any]:
  """Net2WiderNet on every SwiGLU FFN of a `jaxparams.models.Llama`.

  ``gate_proj``/``up_proj`` columns (and biases) are copied per unit and
  ``down_proj`` rows are divided by the replication count.

  Args:
    params: Llama ``'params'`` tree (``layers_{i}/mlp/{gate,up,down}_proj/kernel``).
    config: its `LlamaConfig`.
    new_intermediate_size: new FFN width (``>= config.intermediate_size``).
    key: PRNG key for random unit mapping (one mapping per layer); ``None`` = round robin.
    noise: relative symmetry-breaking noise on the copied gate/up columns (0 = exact).

  Returns:
    ``(new_params, new_config)``.

  Raises:
    ValueError: shrinking, or params not matching config.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxparams.models.llama import Llama, LlamaConfig
    >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8,
    ...                   num_hidden_layers=1, num_attention_heads=2)
    >>> ids = jnp.zeros((1, 3), jnp.int32)
    >>> p = Llama(cfg).init(jax.random.key(0), ids)['params']
    >>> p2, cfg2 = widen_llama_ffn(p, cfg, 12)
    >>> bool(jnp.allclose(Llama(cfg).apply({'params': p}, ids),
    ...                   Llama(cfg2).apply({'params': p2}, ids), atol=1e-5))
    True
  """
  n, q = config.intermediate_size, int(new_intermediate_size)
  if q < n:
    raise ValueError(f"widen_llama_ffn: new_intermediate_size={q} < intermediate_size={n} "
                     f"(Net2WiderNet cannot shrink)")
  names = _llama_layers(params, config)
  plan = []
  for idx, name in enumerate(names):
    units = params[name]["mlp"]["gate_proj"]["kernel"].shape[-1]
    if units != n:
      raise ValueError(f"widen_llama_ffn: {name}/mlp/gate_proj/kernel has {units} units, config "
                       f"says {n}")
    lkey = None if key is None else jax.random.fold_in(key, idx)
    map_key, noise_key = (None, None) if lkey is None else jax.random.split(lkey)
    plan.append((name, *wider_mapping(n, q, map_key), noise_key))

  def body(blocks):
    out = {}
    for name, g, counts, noise_key in plan:
      mlp = blocks[name]["mlp"]
      copy = lambda x, g=g: _take(x, g, -1)
      new_mlp = dict(mlp)
      for j, proj in enumerate(("gate_proj", "up_proj")):
        nk = None if noise_key is None else jax.random.fold_in(noise_key, j)
        new_mlp[proj] = _with_bias(mlp[proj], lambda k, nk=nk, copy=copy: _noisy(copy(k), n, 1,
                                                                                 noise, nk), copy)
      new_mlp["down_proj"] = _with_bias(mlp["down_proj"],
                                        lambda k, g=g, c=counts: _split(k, g, c, 0), lambda b: b)
      block = dict(blocks[name])
      block["mlp"] = new_mlp
      out[name] = block
    return out

  out = dict(params)
  out.update(jax.jit(body)({name: params[name] for name in names}))   # one compiled program
  return out, dataclasses.replace(config, intermediate_size=q)


def widen_llama_heads(params: Mapping[str, Any], config: Any, new_num_heads: int,
                      key: jax.Array | None = None) -> tuple[dict[str, Any], Any]:
  """Net2WiderNet on attention heads of a `jaxparams.models.Llama` (MHA or GQA).

  Whole kv groups are copied: the group size G = heads / kv_heads stays fixed,
  so kv_heads grows to ``new_num_heads / G``; a new group is a copy of an old
  group (its k/v head and its G query heads), and each o_proj head block is
  divided by how often its head now occurs. ``head_dim`` is written explicitly
  into the new config (it no longer equals hidden_size / heads).

  Args:
    params: Llama ``'params'`` tree.
    config: its `LlamaConfig`.
    new_num_heads: new query head count; a multiple of G, ``>= num_attention_heads``.
    key: PRNG key for the random group mapping; ``None`` = round robin.

  Returns:
    ``(new_params, new_config)``.

  Raises:
    ValueError: shrinking, or ``new_num_heads`` not a multiple of the group size.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxparams.models.llama import Llama, LlamaConfig
    >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8,
    ...                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    >>> ids = jnp.zeros((1, 3), jnp.int32)
    >>> p = Llama(cfg).init(jax.random.key(0), ids)['params']
    >>> p2, cfg2 = widen_llama_heads(p, cfg, 6)
    >>> (cfg2.num_attention_heads, cfg2.num_key_value_heads, cfg2.head_dim)
    (6, 3, 4)
  """
  nh, nkv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim_
  group = nh // nkv
  new_nh = int(new_num_heads)
  if new_nh < nh:
    raise ValueError(f"widen_llama_heads: new_num_heads={new_nh} < num_attention_heads={nh} "
                     f"(Net2WiderNet cannot shrink)")
  if new_nh % group:
    raise ValueError(f"widen_llama_heads: new_num_heads={new_nh} must be a multiple of the GQA group "
                     f"size {group} (= {nh} heads / {nkv} kv heads) so kv groups are copied whole")
  new_nkv = new_nh // group
  gkv, _ = wider_mapping(nkv, new_nkv, key)
  head_src = (gkv[:, None] * group + np.arange(group)[None, :]).reshape(-1)   # [new_nh]
  head_counts = np.bincount(head_src, minlength=nh)[head_src]
  cols = lambda src: (src[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
  q_cols, kv_cols = cols(head_src), cols(gkv)
  row_counts = np.repeat(head_counts, hd)
  names = _llama_layers(params, config)
  for name in names:
    cols_found = params[name]["attn"]["q_proj"]["kernel"].shape[-1]
    if cols_found != nh * hd:
      raise ValueError(f"widen_llama_heads: {name}/attn/q_proj/kernel has {cols_found} columns, "
                       f"expected {nh}*{hd}")

  def body(blocks):
    out = {}
    take_q = lambda x: _take(x, q_cols, -1)
    take_kv = lambda x: _take(x, kv_cols, -1)
    for name in names:
      attn = blocks[name]["attn"]
      new_attn = dict(attn)
      new_attn["q_proj"] = _with_bias(attn["q_proj"], take_q, take_q)
      new_attn["k_proj"] = _with_bias(attn["k_proj"], take_kv, take_kv)
      new_attn["v_proj"] = _with_bias(attn["v_proj"], take_kv, take_kv)
      new_attn["o_proj"] = _with_bias(attn["o_proj"], lambda k: _split(k, q_cols, row_counts, 0),
                                      lambda b: b)
      block = dict(blocks[name])
      block["attn"] = new_attn
      out[name] = block
    return out

  out = dict(params)
  out.update(jax.jit(body)({name: params[name] for name in names}))   # one compiled program
  new_config = dataclasses.replace(config, num_attention_heads=new_nh, num_key_value_heads=new_nkv,
                                   head_dim=hd)
  return out, new_config


def deepen_llama(params: Mapping[str, Any], config: Any, positions: Sequence[int] | int,
                 *, init: str = "copy") -> tuple[dict[str, Any], Any]:
  """Net2DeeperNet for `jaxparams.models.Llama`: insert identity blocks.

  An inserted block has zero ``o_proj`` and ``down_proj`` (and biases), so both
  residual branches add 0 and the block returns its input exactly. Its other
  weights are copied from the old block just before it (``init='copy'``, the
  block at index 0 when inserting at 0), so gradients flow into the zero
  projections at once; ``init='zeros'`` zeroes q/k/v/gate/up as well (norm
  scales stay 1).

  Args:
    params: Llama ``'params'`` tree.
    config: its `LlamaConfig`.
    positions: old-layer indices in ``[0, L]``; a new block is inserted before
      old layer i (``L`` appends at the end). Repeats insert several blocks.
    init: ``'copy'`` or ``'zeros'``.

  Returns:
    ``(new_params, new_config)`` with ``num_hidden_layers`` increased.

  Raises:
    ValueError: positions out of range or unknown ``init``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxparams.models.llama import Llama, LlamaConfig
    >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8,
    ...                   num_hidden_layers=2, num_attention_heads=2)
    >>> p = Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))['params']
    >>> p2, cfg2 = deepen_llama(p, cfg, [1, 2])
    >>> cfg2.num_hidden_layers, sorted(k for k in p2 if k.startswith('layers_'))[-1]
    (4, 'layers_3')
  """
  if init not in ("copy", "zeros"):
    raise ValueError(f"deepen_llama: init must be 'copy' or 'zeros', found {init!r}")
  n_layers = config.num_hidden_layers
  positions = [positions] if isinstance(positions, int) else list(positions)
  bad = [p for p in positions if not 0 <= int(p) <= n_layers]
  if bad:
    raise ValueError(f"deepen_llama: positions {bad} out of range [0, {n_layers}] "
                     f"(num_hidden_layers={n_layers})")
  names = _llama_layers(params, config)
  blocks: list[Any] = []
  make_identity = jax.jit(lambda block: _identity_block(block, init))   # compiled once per call
  for i in range(n_layers + 1):
    for _ in range(sum(1 for p in positions if int(p) == i)):
      blocks.append(make_identity(params[names[max(i - 1, 0)]]))
    if i < n_layers:
      blocks.append(params[names[i]])
  out = {k: v for k, v in params.items() if k not in names}
  for i, block in enumerate(blocks):
    out[f"layers_{i}"] = block
  return out, dataclasses.replace(config, num_hidden_layers=len(blocks))


def _identity_block(block: Mapping[str, Any], init: str) -> dict[str, Any]:
  zero = lambda t: jax.tree_util.tree_map(jnp.zeros_like, t)
  new = jax.tree_util.tree_map(jnp.asarray, dict(block))
  new["attn"] = dict(new["attn"])
  new["mlp"] = dict(new["mlp"])
  new["attn"]["o_proj"] = zero(block["attn"]["o_proj"])
  new["mlp"]["down_proj"] = zero(block["mlp"]["down_proj"])
  if init == "zeros":
    for proj in ("q_proj", "k_proj", "v_proj"):
      new["attn"][proj] = zero(block["attn"][proj])
    for proj in ("gate_proj", "up_proj"):
      new["mlp"][proj] = zero(block["mlp"][proj])
  return new
