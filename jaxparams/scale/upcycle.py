"""Sparse upcycling: dense FFN → mixture of experts that computes the same function at init.

The MoE model (:class:`MoELlama`, :func:`moe_ffn`, routing) is in :mod:`jaxparams.models.moe_llama`;
this module holds the growth functions that build its parameters from dense models.

Komatsuzaki et al. "Sparse Upcycling" (2022); the role of mergekit-moe. A dense
SwiGLU FFN ``f`` becomes E experts (copies of ``f`` or FFNs of several
fine-tuned models) and a linear router. For a token x the router gives
softmax probabilities p = softmax(x R); the top-k experts are kept and their
gates renormalised to sum to 1:

  y = Σ_{e ∈ topk(p)} (p_e / Σ_{e' ∈ topk} p_e') · f_e(x).

With identical experts y = f(x) · Σ gates = f(x) for *any* router, so the
upcycled model equals the dense model at initialisation (up to float
rounding). ``normalize_gates=False`` (Switch/GShard style unnormalised top-k)
would scale the output by Σ_topk p_e < 1 and is not function-preserving.

Param layout of one MoE FFN (experts stacked on a leading axis E)::

  router/kernel               [d, E]
  experts/gate_proj/kernel    [E, d, I]   (+ bias [E, I])
  experts/up_proj/kernel      [E, d, I]
  experts/down_proj/kernel    [E, I, d]   (+ bias [E, d])

This is the dense formulation (every expert runs on every token, gates zero
outside the top k): exact and simple for growth and tests, not a dispatching
kernel for large-scale training.

Example:
  >>> import jax, jax.numpy as jnp
  >>> dense = {'gate_proj': {'kernel': jnp.ones((4, 6))}, 'up_proj': {'kernel': jnp.ones((4, 6))},
  ...          'down_proj': {'kernel': jnp.ones((6, 4))}}
  >>> moe = upcycle_ffn(dense, num_experts=4, key=jax.random.PRNGKey(0))
  >>> x = jnp.ones((3, 4))
  >>> bool(jnp.allclose(moe_ffn(moe, x, top_k=2), swiglu_ffn(dense, x)))
  True
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

# The model lives in jaxparams.models.moe_llama; re-exported here (old import paths keep working).
from jaxparams.models.moe_llama import (MoEFFN, MoELlama, MoELlamaConfig, moe_ffn, route,
                                        swiglu_ffn)

__all__ = [
    "MoEFFN", "MoELlama", "MoELlamaConfig", "experts_from_models", "extract_expert",
    "extract_llama", "moe_ffn", "route", "router_from_hidden", "swiglu_ffn", "upcycle_ffn",
    "upcycle_llama",
]


@functools.partial(jax.jit, static_argnums=1)
def _broadcast_experts(ffn: Any, num_experts: int) -> Any:
  return jax.tree_util.tree_map(lambda w: jnp.broadcast_to(w, (num_experts,) + w.shape), ffn)


@jax.jit
def _stack_experts(ffns: list) -> Any:
  return jax.tree_util.tree_map(lambda *ws: jnp.stack(ws), *ffns)


@jax.jit
def _take_expert(experts: Any, i: jax.Array) -> Any:
  return jax.tree_util.tree_map(lambda w: w[i], experts)


def _num_experts(experts: Mapping[str, Any]) -> int:
  sizes = {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(experts)}
  if len(sizes) != 1:
    raise ValueError(f"experts: leading (expert) axis sizes differ across leaves: {sorted(sizes)}")
  return sizes.pop()


def _router(d: int, num_experts: int, key: jax.Array | None, std: float, dtype) -> dict:
  if key is None or std == 0.0:
    return {"kernel": jnp.zeros((d, num_experts), dtype)}
  return {"kernel": (std * jax.random.normal(key, (d, num_experts), jnp.float32)).astype(dtype)}


def _hidden_size(ffn: Mapping[str, Any]) -> int:
  try:
    return ffn["gate_proj"]["kernel"].shape[0]
  except (KeyError, TypeError) as e:
    raise ValueError(f"expected a SwiGLU FFN with gate_proj/up_proj/down_proj kernels, found keys "
                     f"{sorted(ffn) if isinstance(ffn, Mapping) else type(ffn)}") from e


def upcycle_ffn(ffn: Mapping[str, Any], num_experts: int, *, key: jax.Array | None = None,
                router_std: float = 0.02) -> dict[str, Any]:
  """Dense FFN params → MoE params with ``num_experts`` identical copies and a router.

  Args:
    ffn: dense FFN params (``gate_proj``/``up_proj``/``down_proj``).
    num_experts: E ≥ 1.
    key: PRNG key for the router (``None`` → zero router: uniform routing).
    router_std: std of the random router init.

  Returns:
    ``{'router': ..., 'experts': ...}`` (exactly the dense function under
    `moe_ffn` with normalised gates, for any router).
  """
  if num_experts < 1:
    raise ValueError(f"upcycle_ffn: num_experts must be >= 1, found {num_experts}")
  d = _hidden_size(ffn)
  experts = _broadcast_experts(dict(ffn), num_experts)
  dtype = ffn["gate_proj"]["kernel"].dtype
  return {"router": _router(d, num_experts, key, router_std, dtype), "experts": experts}


def experts_from_models(ffns: Sequence[Mapping[str, Any]], *, router: jax.Array | None = None,
                        key: jax.Array | None = None, router_std: float = 0.02) -> dict[str, Any]:
  """Stack the FFNs of several (fine-tuned) dense models as experts (mergekit-moe's use).

  Args:
    ffns: one dense FFN param tree per expert, identical structure and shapes.
    router: optional router kernel ``[d, E]`` (e.g. from `router_from_hidden`).
    key, router_std: random router when ``router`` is None (zero if key is None).

  Raises:
    ValueError: on an empty list, or trees with different structure/shapes.
  """
  if not ffns:
    raise ValueError("experts_from_models: need at least one FFN")
  first = jax.tree_util.tree_structure(dict(ffns[0]))
  shapes0 = [w.shape for w in jax.tree_util.tree_leaves(dict(ffns[0]))]
  for i, f in enumerate(ffns[1:], 1):
    if jax.tree_util.tree_structure(dict(f)) != first:
      raise ValueError(f"experts_from_models: FFN {i} has structure "
                       f"{jax.tree_util.tree_structure(dict(f))}, expected {first}")
    shapes = [w.shape for w in jax.tree_util.tree_leaves(dict(f))]
    if shapes != shapes0:
      raise ValueError(f"experts_from_models: FFN {i} shapes {shapes} differ from FFN 0 {shapes0}")
  d = _hidden_size(ffns[0])
  experts = _stack_experts([dict(f) for f in ffns])
  if router is None:
    router_p = _router(d, len(ffns), key, router_std, ffns[0]["gate_proj"]["kernel"].dtype)
  else:
    if router.shape != (d, len(ffns)):
      raise ValueError(f"experts_from_models: router has shape {router.shape}, expected "
                       f"{(d, len(ffns))}")
    router_p = {"kernel": jnp.asarray(router)}
  return {"router": router_p, "experts": experts}


def router_from_hidden(hidden_per_expert: Sequence[jax.Array], *, scale: float = 1.0) -> jax.Array:
  """Router kernel from hidden states of prompts for each expert (mergekit-moe 'hidden' mode).

  Column e is the unit-normalised mean hidden state of expert e's prompts times
  ``scale``, so tokens resembling those prompts route to expert e.

  Args:
    hidden_per_expert: for each expert an array ``[n_e, d]`` (or ``[..., d]``).

  Returns:
    ``[d, E]`` router kernel.

  Example:
    >>> import jax.numpy as jnp
    >>> router_from_hidden([jnp.array([[2.0, 0.0]]), jnp.array([[0.0, 3.0]])]).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
  """
  def body(hs):
    cols = []
    for h in hs:
      m = jnp.mean(jnp.reshape(h, (-1, h.shape[-1])).astype(jnp.float32), axis=0)
      cols.append(m / jnp.maximum(jnp.linalg.norm(m), 1e-12))
    return scale * jnp.stack(cols, axis=1)

  return jax.jit(body)([jnp.asarray(h) for h in hidden_per_expert])


def extract_expert(moe_params: Mapping[str, Any], i: int) -> dict[str, Any]:
  """Expert ``i`` of one MoE FFN back as dense FFN params.

  Raises:
    ValueError: if ``i`` is out of range.
  """
  n = _num_experts(moe_params["experts"])
  if not 0 <= i < n:
    raise ValueError(f"extract_expert: expert index {i} out of range [0, {n})")
  return _take_expert(dict(moe_params["experts"]), i)


def upcycle_llama(params: Mapping[str, Any], config: Any, num_experts: int, *, top_k: int = 2,
                  key: jax.Array | None = None, router_std: float = 0.02
                  ) -> tuple[dict[str, Any], MoELlamaConfig]:
  """Upcycle every FFN of a `jaxparams.models.Llama` into E experts (same outputs at init).

  Returns:
    ``(moe_params, MoELlamaConfig)`` for `MoELlama`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxparams.models.llama import Llama, LlamaConfig
    >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8,
    ...                   num_hidden_layers=1, num_attention_heads=2)
    >>> ids = jnp.zeros((1, 3), jnp.int32)
    >>> p = Llama(cfg).init(jax.random.key(0), ids)['params']
    >>> mp, mcfg = upcycle_llama(p, cfg, 4, key=jax.random.key(1))
    >>> bool(jnp.allclose(Llama(cfg).apply({'params': p}, ids),
    ...                   MoELlama(mcfg).apply({'params': mp}, ids), atol=1e-5))
    True
  """
  mcfg = MoELlamaConfig(llama=config, num_experts=num_experts, top_k=top_k)
  names = [f"layers_{i}" for i in range(config.num_hidden_layers)]
  for name in names:
    if name not in params:
      raise ValueError(f"upcycle_llama: missing {name} (config.num_hidden_layers="
                       f"{config.num_hidden_layers})")

  def body(blocks, key):
    out = {}
    for i, name in enumerate(names):
      lkey = None if key is None else jax.random.fold_in(key, i)
      block = dict(blocks[name])
      block["mlp"] = upcycle_ffn(blocks[name]["mlp"], num_experts, key=lkey,
                                 router_std=router_std)
      out[name] = block
    return out

  out = dict(params)
  out.update(jax.jit(body)({n: params[n] for n in names}, key))   # one compiled program
  return out, mcfg


def extract_llama(moe_params: Mapping[str, Any], config: MoELlamaConfig, i: int
                  ) -> tuple[dict[str, Any], Any]:
  """Dense Llama params using expert ``i`` in every layer (inverse of `upcycle_llama`)."""
  n = config.num_experts
  if not 0 <= i < n:
    raise ValueError(f"extract_llama: expert index {i} out of range [0, {n})")
  names = [f"layers_{layer}" for layer in range(config.llama.num_hidden_layers)]

  def body(blocks):
    out = {}
    for name in names:
      block = dict(blocks[name])
      block["mlp"] = jax.tree_util.tree_map(lambda w: w[i], dict(blocks[name]["mlp"]["experts"]))
      out[name] = block
    return out

  out = dict(moe_params)
  out.update(jax.jit(body)({n_: moe_params[n_] for n_ in names}))
  return out, config.llama
