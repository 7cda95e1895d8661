"""Sparse FFNs: relufication, brief fine-tuning and the FFN sparsity of a Llama on text.

The paper's models have ReLU FFNs (OPT) or are relufied (Falcon): SiLU is swapped
for ReLU and the model is fine-tuned briefly (Mirzadeh et al., "ReLU strikes back").
For the gated Llama FFN ``down(act(gate x) * up x)`` a neuron is active when
``gate x > 0`` (ReLU); its contribution is exactly zero otherwise.

* :func:`relufy`: the config with ``hidden_act='relu'`` (weights unchanged).
* :func:`finetune`: a short next-token training loop (AdamW) of the whole model.
* :func:`ffn_inputs`: the FFN input rows of each layer (``calib`` capture).
* :func:`active_neurons`: the boolean activity ``gate x > 0`` per layer.
* :func:`ffn_sparsity`: fraction of inactive neurons per layer on token batches.
* :func:`perplexity`: token-level perplexity of ids under a model (``mlp_mask`` optional).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models import Llama, LlamaConfig
  >>> cfg = relufy(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...                          num_hidden_layers=1, num_attention_heads=2))
  >>> ids = jnp.ones((2, 6), jnp.int32)
  >>> params = Llama(cfg).init(jax.random.key(0), ids)['params']
  >>> s = ffn_sparsity(Llama(cfg), params, [ids])
  >>> len(s), 0.0 <= s[0] <= 1.0
  (1, True)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxparams.calib import capture_inputs
from jaxparams.calib.capture import capture_calls

__all__ = ["relufy", "finetune", "ffn_inputs", "active_neurons", "ffn_sparsity", "lm_loss",
           "perplexity", "byte_ids"]


# Module path of any layer's FFN output projection (``layers_3/mlp/down_proj``).
_DOWN_PROJ = re.compile(r"(?:.*/)?mlp/down_proj")


def relufy(config: Any) -> Any:
  """The same config with a ReLU FFN gate (``hidden_act='relu'``)."""
  if not hasattr(config, "hidden_act"):
    raise ValueError(f"relufy: {type(config).__name__} has no hidden_act field")
  return dataclasses.replace(config, hidden_act="relu")


def byte_ids(texts: Sequence[str], seq_len: int) -> np.ndarray:
  """UTF-8 bytes of the joined texts cut into rows ``int32[n, seq_len]`` (vocabulary 256).

  Example:
    >>> byte_ids(['ab', 'cd'], 2).tolist()
    [[97, 98], [10, 99]]
  """
  data = np.frombuffer("\n".join(texts).encode("utf-8"), np.uint8).astype(np.int32)
  n = len(data) // seq_len
  if n == 0:
    raise ValueError(f"byte_ids: {len(data)} bytes of text is less than one row of {seq_len}")
  return data[:n * seq_len].reshape(n, seq_len)


def lm_loss(module: Any, params: Any, ids: jax.Array, activation_l1: float = 0.0) -> jax.Array:
  """Mean next-token cross-entropy of ``ids[b, t]`` (nats).

  ``activation_l1 > 0`` adds that times the mean ``|act(gate x) * up x|`` of every FFN (the
  input of ``down_proj``): the activation sparsity regulariser of ProSparse (Song et al.
  2024), which pushes a relufied model's gates below zero.
  """
  if not activation_l1:
    logits = module.apply({"params": params}, ids[:, :-1]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()
  # The input of every FFN's down_proj, read by the calibration layer's capture.
  logits, ins, _ = capture_calls(module, params, ids[:, :-1], inputs=[_DOWN_PROJ])
  logits = logits.astype(jnp.float32)
  acts = [jnp.abs(x.astype(jnp.float32)).mean() for x in ins.values()]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()
  return ce + activation_l1 * jnp.mean(jnp.stack(acts))


def perplexity(module: Any, params: Any, batches: Iterable[Any]) -> float:
  """``exp`` of the mean next-token loss over ``batches`` of ids."""
  f = jax.jit(lambda p, x: lm_loss(module, p, x))
  losses = [float(f(params, jnp.asarray(b))) for b in batches]
  if not losses:
    raise ValueError("perplexity: no batches")
  return float(np.exp(np.mean(losses)))


def finetune(module: Any, params: Any, batches: Sequence[Any], *, steps: int,
             learning_rate: float = 1e-3, weight_decay: float = 0.0, warmup: int = 20,
             activation_l1: float = 0.0, log_every: int = 0) -> tuple[Any, list[float]]:
  """Trains every parameter for ``steps`` next-token steps (AdamW, cosine schedule).

  Used for relufication (swap the activation, then fine-tune briefly) and for
  training small models from scratch. ``batches`` are cycled. ``activation_l1``: see
  :func:`lm_loss` (losses logged include it).

  Returns:
    ``(params, losses)``.
  """
  if steps < 1 or not batches:
    raise ValueError(f"finetune: need steps >= 1 and batches, got steps={steps}, "
                     f"{len(batches)} batches")
  sched = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(warmup, max(steps // 10, 1)),
                                             steps + 1,
                                             learning_rate * 0.1)
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=weight_decay))
  state = opt.init(params)

  @jax.jit
  def step(p, s, x):
    loss, g = jax.value_and_grad(lambda q: lm_loss(module, q, x, activation_l1))(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  losses = []
  for i in range(steps):
    params, state, loss = step(params, state, jnp.asarray(batches[i % len(batches)]))
    if log_every and (i % log_every == 0 or i == steps - 1):
      losses.append(float(loss))
      print(f"  step {i}: loss {losses[-1]:.3f}", flush=True)
  if not log_every:
    losses.append(float(loss))
  return params, losses


def _gate_paths(params: Any) -> list[str]:
  n = sum(1 for k in params if k.startswith("layers_"))
  return [f"layers_{i}/mlp/gate_proj/kernel" for i in range(n)]


def ffn_inputs(module: Any, params: Any, ids: Any) -> list[np.ndarray]:
  """The FFN input rows ``[n_tokens, H]`` of every layer (post-attention RMSNorm output)."""
  paths = _gate_paths(params)
  xs = capture_inputs(module, params, jnp.asarray(ids), paths=paths)
  return [np.asarray(xs[p], np.float32) for p in paths]


def active_neurons(params: Any, layer: int, x: Any) -> np.ndarray:
  """``bool[n, I]``: neurons with ``gate x > 0`` (active under ReLU) for FFN inputs ``x``."""
  g = params[f"layers_{layer}"]["mlp"]["gate_proj"]
  pre = jnp.asarray(x) @ jnp.asarray(g["kernel"], jnp.float32)
  if "bias" in g:
    pre = pre + g["bias"]
  return np.asarray(pre > 0)


def ffn_sparsity(module: Any, params: Any, batches: Iterable[Any]) -> list[float]:
  """Fraction of FFN neurons inactive (``gate x <= 0``) per layer, over all tokens of batches."""
  n_layers = len(_gate_paths(params))
  inactive = np.zeros(n_layers)
  count = 0
  for b in batches:
    xs = ffn_inputs(module, params, b)
    for i, x in enumerate(xs):
      inactive[i] += float((~active_neurons(params, i, x)).sum())
    count += xs[0].shape[0] * params["layers_0"]["mlp"]["gate_proj"]["kernel"].shape[1]
  if not count:
    raise ValueError("ffn_sparsity: no batches")
  return [float(v / count) for v in inactive]
