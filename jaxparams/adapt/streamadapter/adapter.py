"""StreamAdapter: context mapping (learnable queries + gated chunk recurrence) and weight absorption.

After Muhtar et al., "StreamAdapter: Efficient Test Time Adaptation from Contextual Streams"
(arXiv 2411.09289). Two learned modules turn demonstrations into a weight update:

1. **Context mapping** (:func:`context_state`). For every layer ``l``: ``M`` learnable queries
   ``Q_l`` cross-attend to each chunk ``c`` of the demonstrations' key/value features
   (:mod:`.context`), with a learned null key/value the queries fall back on when a chunk holds
   nothing for them: ``S^_c = softmax(Q_l K_c^T / sqrt(d)) V_c``. A gated recurrence folds the
   chunk summaries into a fixed-size state ``S_c = g_c * S_{c-1} + (1 - g_c) * S^_c`` with
   ``g_c = sigmoid([S_{c-1}, S^_c] W_g + b_g)``, ``S_0 = 0`` (fully padded chunks leave ``S``
   unchanged). The state ``[M, d]`` per layer does not grow with the number of demonstrations.
2. **Weight absorption** (:func:`absorb`). For every target matrix ``W [in, out]`` of layer ``l``:
   ``A = S_l P_a + U`` (``[M, in]``) and ``B = S_l P_b`` (``[M, out]``), and
   ``dW = scale * sum_m A_m^T B_m`` -- a LoRA of rank ``M`` in :mod:`jaxparams.adapt`'s adapter
   format (``{'a': [in, M], 'b': [M, out], 'scale'}`` at the kernel's path). It runs unmerged through
   the models' ``dot=`` injection point (:func:`query_logits`) or merged with
   :func:`jaxparams.adapt.merge`. An empty context gives ``S = 0``, hence ``B = 0`` and ``dW = 0``.

The base model stays frozen: its parameters enter under ``stop_gradient``; only the returned
adapter-parameter tree (``mapper`` + ``absorber``) is trained.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models import Llama, LlamaConfig
  >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
  ...                   num_hidden_layers=2, num_attention_heads=2)
  >>> model = Llama(cfg)
  >>> base = model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))['params']
  >>> sa = StreamAdapterConfig(num_queries=4, state_dim=8, chunk_size=4)
  >>> ap = init(jax.random.key(1), cfg, base, sa)
  >>> ad = absorb(ap, context_state(ap, model, base, jnp.ones((2, 7), jnp.int32), sa), sa)
  >>> sorted(ad['layers_1']['mlp']['down_proj']['kernel']), ad['layers_1']['mlp']['down_proj']['kernel']['a'].shape
  (['a', 'b', 'scale'], (2, 16, 4))
  >>> query_logits(model, base, ad, jnp.zeros((2, 3, 2), jnp.int32)).shape
  (2, 3, 2, 16)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp

from jaxparams import tree as jtree
from jaxparams.adapt import tree_api
from jaxparams.adapt.streamadapter import context as ctx_lib

__all__ = ["StreamAdapterConfig", "init", "context_state", "absorb", "query_logits",
           "target_paths", "adapter_from_context"]

_LAYER = re.compile(r"(?:^|/)layers_(\d+)/")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamAdapterConfig:
  """Sizes of the StreamAdapter modules.

  Attributes:
    num_queries: ``M``, learnable queries per layer = rank of each absorbed update.
    state_dim: ``d``, width of the context state.
    chunk_size: Demonstration tokens per chunk.
    targets: ``where=`` patterns (globs over parameter paths) of the matrices that absorb the
      context; each must be a ``layers_{i}/...`` Linear kernel.
    scale: Multiplier of every absorbed update.
  """
  num_queries: int = 16
  state_dim: int = 64
  chunk_size: int = 16
  targets: tuple[str, ...] = ("**/attn/o_proj/kernel", "**/mlp/down_proj/kernel")
  scale: float = 1.0

  def __post_init__(self):
    for name in ("num_queries", "state_dim", "chunk_size"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"StreamAdapterConfig.{name} must be >= 1, found {getattr(self, name)}")
    if isinstance(self.targets, str):
      object.__setattr__(self, "targets", (self.targets,))
    if not self.targets:
      raise ValueError("StreamAdapterConfig.targets is empty: name at least one weight matrix")


def target_paths(base_params: Any, config: StreamAdapterConfig) -> dict[str, tuple[int, int, int]]:
  """``{path: (layer, in, out)}`` of the matrices selected by ``config.targets``.

  Raises:
    ValueError: when a pattern matches nothing, or a match is not a 2-D kernel inside a layer.
  """
  flat = dict(jtree.flatten(base_params))
  out = {}
  for pattern in config.targets:
    hits = jtree.select(flat, pattern, flat=True, strict=False)
    if not hits:
      raise ValueError(f"StreamAdapter target {pattern!r} matches no parameter; paths look like "
                       f"{sorted(flat)[:4]}")
    for p in hits:
      layer = _LAYER.search(p)
      if layer is None or jnp.ndim(flat[p]) != 2:
        raise ValueError(f"StreamAdapter target {p!r} (from {pattern!r}) must be a 2-D kernel "
                         f"inside layers_{{i}}/, found shape {jnp.shape(flat[p])}")
      out[p] = (int(layer.group(1)), *map(int, jnp.shape(flat[p])))
  return dict(sorted(out.items()))


def _module_name(path: str) -> str:
  return path.replace("/", ".")


def init(key: jax.Array, model_config: Any, base_params: Any,
         config: StreamAdapterConfig) -> dict[str, Any]:
  """Fresh adapter parameters ``{'mapper': {...}, 'absorber': {path: {...}}}``.

  ``P_b`` starts at zero, so the untrained adapter leaves the base model unchanged (as LoRA's
  ``B``).
  """
  nl, m, d = model_config.num_hidden_layers, config.num_queries, config.state_dim
  f = ctx_lib.feature_dim(model_config)
  keys = iter(jax.random.split(key, 8 + 2 * len(config.targets) * nl))
  normal = lambda shape, std: std * jax.random.normal(next(keys), shape, jnp.float32)
  mapper = {
      "queries": normal((nl, m, d), 1.0),
      "w_key": normal((nl, f, d), f ** -0.5),
      "w_value": normal((nl, f, d), f ** -0.5),
      "null_key": normal((nl, d), 1.0),
      "null_value": jnp.zeros((nl, d), jnp.float32),
      "gate_w": normal((nl, 2 * d, d), (2 * d) ** -0.5),
      "gate_b": jnp.zeros((nl, d), jnp.float32),
  }
  absorber = {}
  for path, (_, n_in, n_out) in target_paths(base_params, config).items():
    absorber[_module_name(path)] = {
        "key": normal((m, n_in), n_in ** -0.5),
        "proj_a": normal((d, n_in), d ** -0.5 * n_in ** -0.5),
        "proj_b": jnp.zeros((d, n_out), jnp.float32),
    }
  return {"mapper": mapper, "absorber": absorber}


def _rms(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def state_from_chunks(mapper: dict[str, Any], chunks: jax.Array, mask: jax.Array) -> jax.Array:
  """``[batch, layers, M, d]`` context state from ``chunks [b, L, n, C, f]`` and ``mask [b, n, C]``.

  Zero chunks give the zero state.
  """
  b, nl, n, _, _ = chunks.shape
  m, d = mapper["queries"].shape[1:]
  if n == 0:
    return jnp.zeros((b, nl, m, d), jnp.float32)
  x = _rms(chunks.astype(jnp.float32))
  k = jnp.einsum("blncf,lfd->blncd", x, mapper["w_key"])
  v = jnp.einsum("blncf,lfd->blncd", x, mapper["w_value"])
  q = mapper["queries"]
  logits = jnp.einsum("lmd,blncd->blnmc", q, k) * d ** -0.5
  logits = jnp.where(mask[:, None, :, None, :], logits, -jnp.inf)
  null = jnp.einsum("lmd,ld->lm", q, mapper["null_key"]) * d ** -0.5
  null = jnp.broadcast_to(null[None, :, None, :, None], logits.shape[:-1] + (1,))
  p = jax.nn.softmax(jnp.concatenate([logits, null], axis=-1), axis=-1)
  summary = (jnp.einsum("blnmc,blncd->blnmd", p[..., :-1], v)
             + p[..., -1:] * mapper["null_value"][None, :, None, None, :])
  valid = mask.any(axis=-1)                                          # [b, n]

  def step(s, inp):
    summ, ok = inp                                                   # [b, L, M, d], [b]
    g = jax.nn.sigmoid(jnp.einsum("blme,led->blmd", jnp.concatenate([s, summ], axis=-1),
                                  mapper["gate_w"]) + mapper["gate_b"][None, :, None, :])
    new = g * s + (1.0 - g) * summ
    return jnp.where(ok[:, None, None, None], new, s), None

  s0 = jnp.zeros((b, nl, m, d), jnp.float32)
  s, _ = jax.lax.scan(step, s0, (jnp.moveaxis(summary, 2, 0), jnp.moveaxis(valid, 1, 0)))
  return s


def context_state(adapter_params: dict[str, Any], model: Any, base_params: Any,
                  context_ids: jax.Array, config: StreamAdapterConfig,
                  token_mask: jax.Array | None = None) -> jax.Array:
  """Context mapping: ``[batch, layers, M, d]`` state of ``context_ids [batch, 1 + t]``.

  Args:
    adapter_params: From :func:`init` (only ``'mapper'`` is read).
    model: The frozen base :class:`jaxparams.models.Llama`.
    base_params: Its parameters (constants).
    context_ids: ``[BOS, demonstrations...]``; a context of BOS alone is empty.
    config: The :class:`StreamAdapterConfig`.
    token_mask: Optional ``bool[batch, t]`` over the demonstration tokens (False = padding).
  """
  b, t = context_ids.shape
  if t <= 1:
    nl, (m, d) = model.config.num_hidden_layers, adapter_params["mapper"]["queries"].shape[1:]
    return jnp.zeros((b, nl, m, d), jnp.float32)
  feats = ctx_lib.kv_features(model, base_params, context_ids)
  chunks, mask = ctx_lib.chunk(feats, config.chunk_size, token_mask)
  return state_from_chunks(adapter_params["mapper"], chunks, mask)


def absorb(adapter_params: dict[str, Any], state: jax.Array,
           config: StreamAdapterConfig) -> dict[str, Any]:
  """Weight absorption: the batched LoRA-shaped update of every target matrix.

  Returns:
    An adapter tree in :mod:`jaxparams.adapt` format with a leading batch axis on every leaf:
    ``{..path..: {'a': [b, in, M], 'b': [b, M, out], 'scale': [b]}}``, i.e. per example
    ``dW = scale * sum_m a[:, m] b[m, :]``. A zero state gives ``b == 0`` exactly.
  """
  out: dict[str, Any] = {}
  nb = state.shape[0]
  for name, p in adapter_params["absorber"].items():
    layer = int(_LAYER.search(name.replace(".", "/")).group(1))
    s = state[:, layer]                                              # [b, M, d]
    a = jnp.einsum("bmd,di->bmi", s, p["proj_a"]) + p["key"][None]
    bmat = jnp.einsum("bmd,do->bmo", s, p["proj_b"])
    node = out
    parts = name.split(".")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = {"a": jnp.swapaxes(a, 1, 2), "b": bmat,
                       "scale": jnp.full((nb,), config.scale, jnp.float32)}
  return out


def adapter_from_context(adapter_params: dict[str, Any], model: Any, base_params: Any,
                         context_ids: jax.Array, config: StreamAdapterConfig,
                         token_mask: jax.Array | None = None) -> dict[str, Any]:
  """:func:`context_state` then :func:`absorb`: demonstrations -> batched adapter tree."""
  return absorb(adapter_params, context_state(adapter_params, model, base_params, context_ids,
                                              config, token_mask), config)


def query_logits(model: Any, base_params: Any, adapter: dict[str, Any],
                 query_ids: jax.Array) -> jax.Array:
  """Logits ``[b, q, t, vocab]`` of queries ``[b, q, t]`` under example ``i``'s absorbed update.

  Runs the adapter unmerged through the ``dot=`` injection point (:func:`jaxparams.adapt.dot`):
  ``x @ W + scale * (x @ a) @ b``; the base parameters are constants.
  """
  base_params = jax.lax.stop_gradient(base_params)
  dmodel = model.clone(dot=tree_api.dot)

  def one(ad, ids):
    return dmodel.apply({"params": tree_api.inject(base_params, ad)}, ids)

  return jax.vmap(one)(adapter, query_ids)
