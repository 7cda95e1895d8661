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

This module holds the operators on Dense (MLP) stacks; the Llama ones are in
:mod:`jaxparams.scale.llama_growth` and the unit mappings in
:mod:`jaxparams.scale.unit_mapping` (both re-exported here).

Example:
  >>> import jax, jax.numpy as jnp
  >>> params = {'Dense_0': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)},
  ...           'Dense_1': {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros(2)}}
  >>> wide = net2wider_mlp(params, layer='Dense_0', new_width=6)
  >>> wide['Dense_0']['kernel'].shape, wide['Dense_1']['kernel'].shape
  ((3, 6), (6, 2))
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxparams.scale.llama_growth import (deepen_llama, widen_llama_ffn, widen_llama_heads,
                                          widen_llama_hidden)
from jaxparams.scale.unit_mapping import add_noise, split_units, take_units, wider_mapping

__all__ = [
    "DEEPER_ACTIVATIONS", "deepen_llama", "mlp_features", "net2deeper_mlp", "net2wider_mlp", "widen_llama_ffn",
    "widen_llama_heads", "widen_llama_hidden", "wider_mapping",
]

DEEPER_ACTIVATIONS = ("relu", "relu6", "identity", "linear", "hard_tanh")
"""Activations with φ(φ(v)) = φ(v): the ones Net2DeeperNet can insert an identity layer after."""


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
    layer_in["kernel"] = add_noise(take_units(first["kernel"], g, 1), n, 1, noise, noise_key)
    if "bias" in layer_in:
      layer_in["bias"] = take_units(layer_in["bias"], g, 0)
    layer_out = dict(second)
    layer_out["kernel"] = split_units(second["kernel"], g, counts, 0)
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
