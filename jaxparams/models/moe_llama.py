"""Mixture-of-experts Llama: the Llama decoder with a top-k routed SwiGLU FFN in every layer.

The model of sparse upcycling (Komatsuzaki et al. 2022; the role of mergekit-moe). For a token
x the router gives softmax probabilities p = softmax(x R); the top-k experts are kept and their
gates renormalised to sum to 1:

  y = Σ_{e ∈ topk(p)} (p_e / Σ_{e' ∈ topk} p_e') · f_e(x).

With identical experts y = f(x) for any router, so a dense model upcycled by
:func:`jaxparams.scale.upcycle_llama` computes the same function at initialisation.
``normalize_gates=False`` (Switch/GShard style) scales the output by Σ_topk p_e < 1.

Param layout of one MoE FFN (experts stacked on a leading axis E)::

  router/kernel               [d, E]
  experts/gate_proj/kernel    [E, d, I]   (+ bias [E, I])
  experts/up_proj/kernel      [E, d, I]
  experts/down_proj/kernel    [E, I, d]   (+ bias [E, d])

This is the dense formulation (every expert runs on every token, gates zero outside the top k):
exact and simple for growth and tests, not a dispatching kernel for large-scale training.

:class:`MoELlama` is :class:`jaxparams.models.Llama` with the FFN of each decoder layer swapped
(it reuses the Llama embedding, attention, norms, masks and head), so it takes ``dot=`` (quantized
or adapted weights) and ``attention_mask`` like every model here.

Example:
  >>> import jax, jax.numpy as jnp
  >>> dense = {'gate_proj': {'kernel': jnp.ones((4, 6))}, 'up_proj': {'kernel': jnp.ones((4, 6))},
  ...          'down_proj': {'kernel': jnp.ones((6, 4))}}
  >>> moe = {'router': {'kernel': jnp.zeros((4, 3))},
  ...        'experts': jax.tree.map(lambda w: jnp.stack([w] * 3), dense)}
  >>> x = jnp.ones((3, 4))
  >>> bool(jnp.allclose(moe_ffn(moe, x, top_k=2), swiglu_ffn(dense, x)))
  True
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxparams.models.llama import Llama, LlamaBlock

__all__ = ["MoEFFN", "MoELlama", "MoELlamaBlock", "MoELlamaConfig", "moe_ffn", "route",
           "swiglu_ffn"]

DotFn = Callable[[jax.Array, Any], jax.Array]


def swiglu_ffn(params: Mapping[str, Any], x: jax.Array, *, dot: DotFn | None = None
               ) -> jax.Array:
  """Dense SwiGLU FFN ``down(silu(gate(x)) · up(x))`` on Llama-style params.

  ``dot(x, kernel)`` replaces ``x @ kernel`` when given (e.g. ``jaxparams.quant.dot`` for
  quantized kernels), as in :class:`jaxparams.models.Linear`.

  Example:
    >>> import jax.numpy as jnp
    >>> p = {'gate_proj': {'kernel': jnp.zeros((2, 3))}, 'up_proj': {'kernel': jnp.ones((2, 3))},
    ...      'down_proj': {'kernel': jnp.ones((3, 2))}}
    >>> swiglu_ffn(p, jnp.ones((1, 2))).tolist()
    [[0.0, 0.0]]
  """
  def lin(name, h):
    w = params[name]["kernel"]
    y = h @ w.astype(h.dtype) if dot is None else dot(h, w)
    return y + params[name]["bias"].astype(h.dtype) if "bias" in params[name] else y

  return lin("down_proj", jax.nn.silu(lin("gate_proj", x)) * lin("up_proj", x))


def route(logits: jax.Array, top_k: int, normalize_gates: bool = True) -> jax.Array:
  """Top-k gates ``[..., E]`` from router logits (zero outside the top k).

  Args:
    logits: ``[..., E]`` router logits.
    top_k: experts per token (1 ≤ top_k ≤ E).
    normalize_gates: renormalise the kept softmax probabilities to sum to 1.

  Example:
    >>> import jax.numpy as jnp
    >>> [round(float(g), 3) for g in route(jnp.array([0.0, 1.0, 2.0]), 2)]
    [0.0, 0.269, 0.731]
  """
  n = logits.shape[-1]
  if not 1 <= top_k <= n:
    raise ValueError(f"route: top_k={top_k} must be in [1, num_experts={n}]")
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  _, idx = jax.lax.top_k(probs, top_k)          # exactly k experts, ties broken by index
  mask = jnp.any(jax.nn.one_hot(idx, n, dtype=jnp.bool_), axis=-2)
  gates = jnp.where(mask, probs, 0.0)
  if normalize_gates:
    gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
  return gates


def moe_ffn(params: Mapping[str, Any], x: jax.Array, *, top_k: int = 2,
            normalize_gates: bool = True,
            expert_fn: Callable[[Mapping[str, Any], jax.Array], jax.Array] | None = None,
            dot: DotFn | None = None) -> jax.Array:
  """Apply a mixture-of-experts FFN (layout in the module doc).

  Args:
    params: ``{'router': {'kernel': [d, E]}, 'experts': stacked expert params}``.
    x: ``[..., d]`` tokens.
    top_k: experts per token.
    normalize_gates: renormalise the top-k gates (needed for exact upcycling).
    expert_fn: the dense FFN of one expert, ``expert_fn(expert_params, x)`` (default
      :func:`swiglu_ffn` with ``dot``).
    dot: matmul for the router and the default experts (``dot(x, kernel)``); expert kernels are
      stacked on a leading axis and ``dot`` is vmapped over it, so quantized experts are
      stacked per-expert ``QArray`` leaves.

  Returns:
    ``[..., d]``.
  """
  if expert_fn is None:
    expert_fn = functools.partial(swiglu_ffn, dot=dot)
  router = params["router"]["kernel"]
  logits = x @ router.astype(x.dtype) if dot is None else dot(x, router)
  gates = route(logits, top_k, normalize_gates)
  outs = jax.vmap(expert_fn, in_axes=(0, None), out_axes=-2)(params["experts"], x)   # [..., E, d]
  return jnp.einsum("...e,...ed->...d", gates.astype(outs.dtype), outs)


class MoEFFN(nn.Module):
  """Flax MoE SwiGLU FFN with the param layout of the module doc.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> m = MoEFFN(num_experts=4, top_k=2, intermediate_size=8)
    >>> p = m.init(jax.random.PRNGKey(0), jnp.ones((2, 5)))
    >>> p['params']['experts']['gate_proj']['kernel'].shape
    (4, 5, 8)
  """
  num_experts: int
  top_k: int
  intermediate_size: int
  use_bias: bool = False
  normalize_gates: bool = True
  init_std: float = 0.02
  dot: DotFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    e, d, i = self.num_experts, x.shape[-1], self.intermediate_size
    std = self.init_std

    def init_router(rng):
      return {"kernel": std * jax.random.normal(rng, (d, e), jnp.float32)}

    def init_experts(rng):
      keys = jax.random.split(rng, 3)
      out = {}
      for k, (name, shape) in zip(keys, (("gate_proj", (e, d, i)), ("up_proj", (e, d, i)),
                                         ("down_proj", (e, i, d)))):
        out[name] = {"kernel": std * jax.random.normal(k, shape, jnp.float32)}
        if self.use_bias:
          out[name]["bias"] = jnp.zeros((e, shape[-1]), jnp.float32)
      return out

    def get(name, init):  # no shape check: the weights may be quantized (QArray) pytrees
      if self.has_variable("params", name):
        return self.get_variable("params", name)
      return self.param(name, init)

    params = {"router": get("router", init_router), "experts": get("experts", init_experts)}
    return moe_ffn(params, x, top_k=self.top_k, normalize_gates=self.normalize_gates, dot=self.dot)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoELlamaConfig:
  """A `LlamaConfig` plus MoE fields (every layer's FFN becomes a MoE).

  The dense fields are read through (``MoELlamaConfig(...).hidden_size`` is
  ``llama.hidden_size``), so the Llama building blocks take this config unchanged.

  Attributes:
    llama: the dense `jaxparams.models.LlamaConfig`.
    num_experts: experts per layer.
    top_k: experts per token.
    normalize_gates: renormalise top-k gates (True keeps upcycling exact).
  """
  llama: Any
  num_experts: int
  top_k: int = 2
  normalize_gates: bool = True

  def __getattr__(self, name: str) -> Any:
    # The Llama building blocks read the dense fields (hidden_size, ...) from the config.
    if name.startswith("__") or name == "llama":
      raise AttributeError(name)
    return getattr(self.llama, name)

  def __post_init__(self):
    if not 1 <= self.top_k <= self.num_experts:
      raise ValueError(f"MoELlamaConfig: top_k={self.top_k} must be in [1, num_experts="
                       f"{self.num_experts}]")


class MoELlamaBlock(LlamaBlock):
  """A Llama decoder layer whose ``mlp`` is a :class:`MoEFFN` (config: :class:`MoELlamaConfig`)."""

  def feed_forward(self) -> nn.Module:
    mc = self.config
    return MoEFFN(mc.num_experts, mc.top_k, mc.llama.intermediate_size, use_bias=mc.llama.mlp_bias,
                  normalize_gates=mc.normalize_gates, dot=self.dot, name="mlp")


class MoELlama(Llama):
  """:class:`jaxparams.models.Llama` with a :class:`MoEFFN` in every layer.

  Attributes:
    config: a :class:`MoELlamaConfig`.
    dot: optional matmul injected into every linear layer, router and experts included.

  Call arguments as :class:`jaxparams.models.Llama` (``input_ids``, ``attention_mask``,
  ``positions``, ``return_hidden``). Param tree: as Llama, with ``layers_{i}/mlp`` holding
  ``router/kernel`` and ``experts/{gate,up,down}_proj/{kernel,bias}`` stacked over experts.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxparams.models import LlamaConfig
    >>> cfg = MoELlamaConfig(llama=LlamaConfig(vocab_size=16, hidden_size=8,
    ...     intermediate_size=8, num_hidden_layers=1, num_attention_heads=2), num_experts=3)
    >>> ids = jnp.zeros((1, 4), jnp.int32)
    >>> p = MoELlama(cfg).init(jax.random.key(0), ids)['params']
    >>> p['layers_0']['mlp']['experts']['up_proj']['kernel'].shape
    (3, 8, 8)
    >>> MoELlama(cfg).apply({'params': p}, ids, attention_mask=jnp.ones((1, 4))).shape
    (1, 4, 16)
  """

  def decoder_layer(self, name: str) -> nn.Module:
    return MoELlamaBlock(self.config, self.dot, name=name)
