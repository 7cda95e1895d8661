"""TokenFormer growth: append parameter tokens without changing the function (model: models/).

Wang et al., "TokenFormer: Rethinking Transformer Scaling with Tokenized Model
Parameters" (ICLR 2025, arXiv 2410.23168; reference code Haiyang-W/TokenFormer).
Every linear projection of a transformer (Q, K, V, output projection, FFN) is
replaced by *Pattention*: the input tokens attend to ``n`` learnable key/value
parameter tokens,

  A = X K_Pᵀ,   Θ(A)_ij = GeLU(A_ij · τ / ‖A_i,:‖₂),   out = Θ(A) V_P,

with ``K_P ∈ ℝ^{n×d_in}``, ``V_P ∈ ℝ^{n×d_out}`` (the ``l2_norm_gelu``
normalisation that all of the paper's configs use).

Growth appends ``m`` new key/value tokens. New keys are zero, so their scores
are 0, GeLU(0) = 0 and they add nothing to the output; zero scores also leave
the row norm ‖A_i,:‖₂ unchanged. The output is therefore *exactly* unchanged
as long as τ is unchanged. This module keeps τ fixed in the config (default
τ = √n of the model as first built) and `grow` writes the old τ into the new
config. The released PyTorch code recomputes τ = √n_current from the tensor
shape, which rescales every pre-activation by √(n_new/n_old) at the growth
step (about 24% relative output change for 128 → 192 tokens); pass
``rescale_tau=True`` to `grow` to get that variant.

New *value* tokens are drawn from N(0, value_std²) by default (like LoRA's
non-zero factor): with both new keys and new values zero, the new tokens sit at
a saddle where their gradients vanish and they would never train. The choice
does not affect function preservation (Θ of a zero key is exactly 0).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.scale import tokenformer as tf
  >>> cfg = tf.TokenFormerConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2,
  ...                            qkv_tokens=8, out_tokens=8, ffn_tokens=16, max_len=8)
  >>> model = tf.TokenFormer(cfg)
  >>> ids = jnp.zeros((1, 4), jnp.int32)
  >>> params = model.init(jax.random.PRNGKey(0), ids)['params']
  >>> big_params, big_cfg = tf.grow(params, cfg, 8)
  >>> bool(jnp.allclose(model.apply({'params': params}, ids),
  ...                   tf.TokenFormer(big_cfg).apply({'params': big_params}, ids)))
  True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

# The model lives in jaxparams.models.tokenformer; re-exported here (old import paths keep working).
from jaxparams.models.tokenformer import (KINDS, MODULE_KIND, Pattention, TokenFormer,
                                          TokenFormerBlock, TokenFormerConfig, l2_norm_gelu)

__all__ = [
    "KINDS", "Pattention", "TokenFormer", "TokenFormerBlock", "TokenFormerConfig", "grow",
    "grow_optimizer_state",
    "l2_norm_gelu", "pattention_paths",
]

_MODULE_KIND = MODULE_KIND


def pattention_paths(params: Mapping[str, Any]) -> dict[str, str]:
  """Map every Pattention module path in a TokenFormer param tree to its kind.

  Example:
    >>> pattention_paths({'blocks_0': {'ffn': {'key_tokens': 0, 'value_tokens': 0}}})
    {'blocks_0/ffn': 'ffn'}
  """
  found: dict[str, str] = {}

  def walk(node: Any, prefix: str) -> None:
    if not isinstance(node, Mapping):
      return
    if "key_tokens" in node and "value_tokens" in node:
      name = prefix.rsplit("/", 1)[-1]
      if name not in _MODULE_KIND:
        raise ValueError(f"grow: Pattention at {prefix!r} has an unknown module name {name!r}; "
                         f"expected one of {sorted(_MODULE_KIND)}")
      found[prefix] = _MODULE_KIND[name]
      return
    for k, v in node.items():
      walk(v, f"{prefix}/{k}" if prefix else str(k))

  walk(params, "")
  return found


def _as_counts(n_new_tokens: int | Mapping[str, int]) -> dict[str, int]:
  if isinstance(n_new_tokens, Mapping):
    unknown = sorted(set(n_new_tokens) - set(KINDS))
    if unknown:
      raise ValueError(f"grow: unknown Pattention kinds {unknown}; valid kinds: {', '.join(KINDS)}")
    counts = {k: int(n_new_tokens.get(k, 0)) for k in KINDS}
  else:
    counts = {k: int(n_new_tokens) for k in KINDS}
  for k, n in counts.items():
    if n < 0:
      raise ValueError(f"grow: n_new_tokens for {k!r} must be >= 0 (growth cannot remove tokens), "
                       f"found {n}")
  return counts


def grow(params: Mapping[str, Any], config: TokenFormerConfig,
         n_new_tokens: int | Mapping[str, int], *, key: jax.Array | None = None,
         value_init: str = "normal", value_std: float | None = None,
         rescale_tau: bool = False) -> tuple[dict[str, Any], TokenFormerConfig]:
  """Append parameter tokens to every Pattention layer; keeps the function exactly.

  New key tokens are zero; τ of the new config is frozen at the old model's
  resolved τ, so the grown model computes the same outputs (see module doc).

  Args:
    params: TokenFormer params (the ``'params'`` collection). Any tree with the
      same structure works, e.g. Adam moment trees with ``value_init='zeros'``.
    config: the config the params belong to.
    n_new_tokens: tokens to add to every Pattention layer, or a mapping
      ``{'qkv': m1, 'out': m2, 'ffn': m3}`` (missing kinds add 0).
    key: PRNG key for the new value tokens (default ``PRNGKey(0)``).
    value_init: ``'normal'`` (default; N(0, value_std²), trainable) or
      ``'zeros'`` (new tokens get zero gradients until something else moves them).
    value_std: std of new values; default ``config.init_std``.
    rescale_tau: if True, reproduce the reference PyTorch behaviour τ = √n_new
      (NOT function-preserving: pre-activations scale by √(n_new/n_old)).

  Returns:
    ``(new_params, new_config)``.

  Raises:
    ValueError: on negative counts, unknown kinds or value_init, or params whose
      token tables do not match ``config``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> cfg = TokenFormerConfig(vocab_size=8, d_model=4, n_layers=1, n_heads=1,
    ...                         qkv_tokens=2, out_tokens=2, ffn_tokens=2, max_len=4)
    >>> p = TokenFormer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params']
    >>> p2, cfg2 = grow(p, cfg, {'ffn': 6})
    >>> p2['blocks_0']['ffn']['key_tokens'].shape, cfg2.ffn_tokens, cfg2.ffn_tau == cfg.tau('ffn')
    ((8, 4), 8, True)
  """
  if value_init not in ("normal", "zeros"):
    raise ValueError(f"grow: value_init must be 'normal' or 'zeros', found {value_init!r}")
  counts = _as_counts(n_new_tokens)
  std = config.init_std if value_std is None else float(value_std)
  key = jax.random.PRNGKey(0) if key is None else key
  paths = pattention_paths(params)
  if not paths:
    raise ValueError("grow: no Pattention layers (dicts with 'key_tokens' and 'value_tokens') "
                     "found in params")

  def rebuild(node: Any, prefix: str, key: jax.Array) -> Any:
    if prefix in paths:
      kind = paths[prefix]
      keys, values = node["key_tokens"], node["value_tokens"]
      n_old = config.tokens(kind)
      if keys.shape[0] != n_old or values.shape[0] != n_old:
        raise ValueError(f"grow: {prefix} has {keys.shape[0]} key / {values.shape[0]} value tokens "
                         f"but config.{kind}_tokens={n_old}")
      m = counts[kind]
      if m == 0:
        return dict(node)
      new_keys = jnp.zeros((m, keys.shape[1]), keys.dtype)
      if value_init == "zeros":
        new_values = jnp.zeros((m, values.shape[1]), values.dtype)
      else:
        sub = jax.random.fold_in(key, _stable_hash(prefix))
        new_values = (std * jax.random.normal(sub, (m, values.shape[1]), jnp.float32)
                      ).astype(values.dtype)
      out = dict(node)
      out["key_tokens"] = jnp.concatenate([keys, new_keys], axis=0)
      out["value_tokens"] = jnp.concatenate([values, new_values], axis=0)
      return out
    if isinstance(node, Mapping):
      return {k: rebuild(v, f"{prefix}/{k}" if prefix else str(k), key) for k, v in node.items()}
    return node

  # One compiled program for the whole tree (no per-leaf eager compiles; shardings propagate).
  new_params = jax.jit(lambda p, k: rebuild(p, "", k))(dict(params), key)
  changes: dict[str, Any] = {}
  for kind in KINDS:
    changes[f"{kind}_tokens"] = config.tokens(kind) + counts[kind]
    changes[f"{kind}_tau"] = None if rescale_tau else config.tau(kind)
  return new_params, dataclasses.replace(config, **changes)


def _stable_hash(text: str) -> int:
  """Deterministic 31-bit hash (Python's hash() is salted per process)."""
  h = 0
  for ch in text.encode():
    h = (h * 131 + ch) % (2**31 - 1)
  return h


def grow_optimizer_state(opt_state: Any, config: TokenFormerConfig,
                         n_new_tokens: int | Mapping[str, int]) -> Any:
  """Grow every param-shaped tree inside an optax state with zero rows (e.g. Adam's mu, nu).

  Walks tuples, namedtuples, lists and dicts; any mapping that holds
  Pattention tables (``key_tokens``/``value_tokens``) is grown with zeros, other
  leaves (step counts, scalars) are kept. Use the *old* config, the same
  ``n_new_tokens`` as for `grow`. New tokens start with zero moments, the
  optimizer's step count continues.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> cfg = TokenFormerConfig(vocab_size=8, d_model=4, n_layers=1, n_heads=1,
    ...                         qkv_tokens=2, out_tokens=2, ffn_tokens=2, max_len=4)
    >>> p = TokenFormer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params']
    >>> state = optax.adam(1e-3).init(p)
    >>> new = grow_optimizer_state(state, cfg, 3)
    >>> new[0].mu['blocks_0']['ffn']['key_tokens'].shape
    (5, 4)
  """

  def walk(node: Any) -> Any:
    if isinstance(node, Mapping):
      try:
        has_tables = bool(pattention_paths(node))
      except ValueError:
        has_tables = False
      if has_tables:
        return grow(node, config, n_new_tokens, value_init="zeros")[0]
      return type(node)({k: walk(v) for k, v in node.items()}) if isinstance(node, dict) else {
          k: walk(v) for k, v in node.items()}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      return type(node)(*[walk(v) for v in node])
    if isinstance(node, (tuple, list)):
      return type(node)(walk(v) for v in node)
    return node

  return walk(opt_state)
