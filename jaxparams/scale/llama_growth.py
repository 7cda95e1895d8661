"""Net2Net growth of a `jaxparams.models.Llama`: wider FFN, heads and residual stream; new blocks.

Net2WiderNet copies whole units (a SwiGLU unit's gate and up columns, a kv group's heads) and
divides their outgoing rows by the replication count; Net2DeeperNet inserts pre-norm blocks whose
``o_proj`` and ``down_proj`` are zero. Each returns ``(params, config)`` computing the same function
(exact up to float rounding with ``noise=0``). The MLP operators and the theory are in
:mod:`jaxparams.scale.net2net`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models.llama import Llama, LlamaConfig
  >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8,
  ...                   num_hidden_layers=1, num_attention_heads=2)
  >>> p = Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))['params']
  >>> widen_llama_ffn(p, cfg, 16)[1].intermediate_size
  16
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree
from jaxparams.scale.unit_mapping import add_noise, split_units, take_units, wider_mapping

__all__ = ["deepen_llama", "widen_llama_ffn", "widen_llama_heads", "widen_llama_hidden"]


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
      copy = lambda x, g=g: take_units(x, g, -1)
      new_mlp = dict(mlp)
      for j, proj in enumerate(("gate_proj", "up_proj")):
        nk = None if noise_key is None else jax.random.fold_in(noise_key, j)
        new_mlp[proj] = _with_bias(mlp[proj], lambda k, nk=nk, copy=copy: add_noise(copy(k), n, 1,
                                                                                 noise, nk), copy)
      new_mlp["down_proj"] = _with_bias(mlp["down_proj"],
                                        lambda k, g=g, c=counts: split_units(k, g, c, 0), lambda b: b)
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
    ValueError: shrinking, ``new_num_heads`` not a multiple of the group size, or not dividing
      ``hidden_size`` (transformers refuses such a config).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxparams.models.llama import Llama, LlamaConfig
    >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8,
    ...                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    >>> ids = jnp.zeros((1, 3), jnp.int32)
    >>> p = Llama(cfg).init(jax.random.key(0), ids)['params']
    >>> p2, cfg2 = widen_llama_heads(p, cfg, 4)
    >>> (cfg2.num_attention_heads, cfg2.num_key_value_heads, cfg2.head_dim)
    (4, 2, 4)
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
  if config.hidden_size % new_nh:
    raise ValueError(f"widen_llama_heads: new_num_heads={new_nh} does not divide hidden_size="
                     f"{config.hidden_size}; transformers refuses such a config (\"hidden size is "
                     f"not a multiple of the number of attention heads\") whatever its head_dim. "
                     f"Choose a multiple of {group} that divides {config.hidden_size}.")
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
    take_q = lambda x: take_units(x, q_cols, -1)
    take_kv = lambda x: take_units(x, kv_cols, -1)
    for name in names:
      attn = blocks[name]["attn"]
      new_attn = dict(attn)
      new_attn["q_proj"] = _with_bias(attn["q_proj"], take_q, take_q)
      new_attn["k_proj"] = _with_bias(attn["k_proj"], take_kv, take_kv)
      new_attn["v_proj"] = _with_bias(attn["v_proj"], take_kv, take_kv)
      new_attn["o_proj"] = _with_bias(attn["o_proj"], lambda k: split_units(k, q_cols, row_counts, 0),
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


# Where each leaf of a Llama tree meets the residual stream (hidden_size): "out" = the leaf's last
# axis is the stream (copied), "in" = its first axis reads the stream (rows divided by their
# replication count), "none" = not on the stream (kept).
_HIDDEN_ROLES = (
    (re.compile(r"embed_tokens/embedding"), "out"),
    (re.compile(r"(?:layers_\d+/(?:input|post_attention)_layernorm|norm)/scale"), "out"),
    (re.compile(r"layers_\d+/attn/(?:q|k|v|qkv)_proj/kernel"), "in"),
    (re.compile(r"layers_\d+/attn/(?:q|k|v|qkv)_proj/bias"), "none"),
    (re.compile(r"layers_\d+/attn/[qk]_norm/scale"), "none"),
    (re.compile(r"layers_\d+/attn/o_proj/(?:kernel|bias)"), "out"),
    (re.compile(r"layers_\d+/mlp/(?:gate|up|gate_up)_proj/kernel"), "in"),
    (re.compile(r"layers_\d+/mlp/(?:gate|up|gate_up)_proj/bias"), "none"),
    (re.compile(r"layers_\d+/mlp/down_proj/(?:kernel|bias)"), "out"),
    (re.compile(r"lm_head/kernel"), "in"),
)


def widen_llama_hidden(params: Mapping[str, Any], config: Any, new_hidden_size: int
                       ) -> tuple[dict[str, Any], Any]:
  """Net2WiderNet on the residual stream of a `jaxparams.models.Llama` (``hidden_size``).

  Every hidden unit is copied ``k = new_hidden_size / hidden_size`` times: the embedding's
  columns, the norm scales and the columns of the projections that write the stream
  (``o_proj``, ``down_proj``) are repeated, and the rows of the projections that read it
  (q/k/v, gate/up, ``lm_head``) are divided by ``k``. Each copy holds the same value, so RMSNorm
  sees the same mean square and every projection the same sums: the function (and every FFN
  neuron's pre-activation) is unchanged. Heads, ``head_dim`` and the FFN width stay as they are
  (``head_dim`` is written into the config, as it no longer equals ``hidden / heads``).

  Args:
    params: Llama ``'params'`` tree.
    config: its `LlamaConfig`.
    new_hidden_size: a multiple of ``hidden_size`` (a uniform copy count keeps RMSNorm exact).

  Returns:
    ``(new_params, new_config)``.

  Raises:
    ValueError: not a multiple of ``hidden_size``, tied embeddings (the head would read the
      copied embedding ``k`` times over), or a leaf this function does not know (a new switch
      of the model must be placed on the stream before it can be widened).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxparams.models.llama import Llama, LlamaConfig
    >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8,
    ...                   num_hidden_layers=1, num_attention_heads=2)
    >>> ids = jnp.zeros((1, 3), jnp.int32)
    >>> p = Llama(cfg).init(jax.random.key(0), ids)['params']
    >>> p2, cfg2 = widen_llama_hidden(p, cfg, 24)
    >>> (cfg2.hidden_size, cfg2.head_dim, p2['layers_0']['attn']['q_proj']['kernel'].shape)
    (24, 4, (24, 8))
    >>> bool(jnp.allclose(Llama(cfg).apply({'params': p}, ids),
    ...                   Llama(cfg2).apply({'params': p2}, ids), atol=1e-5))
    True
  """
  h, q = config.hidden_size, int(new_hidden_size)
  if q < h or q % h:
    raise ValueError(f"widen_llama_hidden: new_hidden_size={q} must be a multiple of "
                     f"hidden_size={h} (every unit copied equally often keeps RMSNorm exact)")
  if config.tie_word_embeddings:
    raise ValueError("widen_llama_hidden: tied embeddings cannot be widened exactly (the head "
                     "would read each copied embedding column k times); untie them first")
  _llama_layers(params, config)
  g, counts = wider_mapping(h, q)
  flat = jtree.flatten(params)
  roles = {}
  for name in flat:
    role = next((r for pat, r in _HIDDEN_ROLES if pat.fullmatch(name)), None)
    if role is None:
      raise ValueError(f"widen_llama_hidden: unknown leaf {name!r}; known: embedding, norm "
                       "scales, q/k/v/o, gate/up/down, lm_head (and their biases)")
    roles[name] = role

  def body(leaves):
    out = {}
    for name, x in leaves.items():
      if roles[name] == "out":
        out[name] = take_units(x, g, -1)
      elif roles[name] == "in":
        out[name] = split_units(x, g, counts, 0)
      else:
        out[name] = jnp.asarray(x)
    return out

  out = jtree.unflatten(jax.jit(body)(flat), like=params)   # one compiled program
  return out, dataclasses.replace(config, hidden_size=q, head_dim=config.head_dim_)


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
