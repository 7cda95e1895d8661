"""Training a graph hypernetwork on an architecture dataset (GHN-3/LoGAH objective), with optax.

Each step samples ``archs_per_step`` architectures and a token batch, predicts every parameter of
each architecture, runs it on the batch and back-propagates its language-modelling loss into the
hypernetwork (the predicted parameters are never trained themselves). Optimiser as the LoGAH
README: AdamW (lr 3e-4, weight decay 1e-2), warm-up then cosine decay, gradient clipping at 5.

The step is split so that little is compiled per architecture: the hypernetwork (graphs padded to
one node count) is compiled once for its forward and once for its backward pass; per distinct
architecture, the model's LM-loss gradient is compiled once (shared by every hypernetwork trained
in the process) and the small "cut the leaves out of the decoder outputs" and its transpose once
per hypernetwork. (Eager JAX would compile every small op per shape instead: much slower.) Everything is a pure function of ``key``: sampling order, batches and weights.

Example:
  >>> import jax, numpy as np
  >>> from jaxparams import predict
  >>> cfgs = predict.sample_configs(2, seed=0, depth=(1, 1), width=(8, 16))
  >>> hn = predict.init(jax.random.key(0), predict.HypernetConfig(hid=8, layers=1, heads=2,
  ...                                                              rank=2, max_width=256))
  >>> toks = np.arange(2000) % 256
  >>> hn, log = predict.fit(hn, cfgs, toks, predict.FitConfig(steps=2, batch_size=2, seq_len=8),
  ...                       key=jax.random.key(1))
  >>> len(log), sorted(log[0])
  (2, ['arch', 'loss', 'step'])
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxparams import tree as jtree
from jaxparams.models import model_for_config
from jaxparams.predict import encoder
from jaxparams.predict.graph import build
from jaxparams.predict.hypernet import Hypernet, leaves_from_raw, pad_arrays, raw_outputs

__all__ = ["FitConfig", "fit", "lm_loss", "token_batch", "optimizer"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitConfig:
  """Hyperparameters of hypernetwork training (defaults: the LoGAH README's GPT-2 run)."""
  steps: int = 1000
  batch_size: int = 8
  seq_len: int = 64
  lr: float = 3e-4
  weight_decay: float = 1e-2
  warmup: int = 50
  grad_clip: float = 5.0
  archs_per_step: int = 1
  log_every: int = 0

  def __post_init__(self):
    for f in ("steps", "batch_size", "seq_len", "archs_per_step"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"FitConfig.{f} must be >= 1, found {getattr(self, f)}")


def optimizer(lr: float, steps: int, *, warmup: int = 0, weight_decay: float = 0.0,
              grad_clip: float = 0.0) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay, optionally clipped by global norm."""
  warmup = max(0, min(warmup, steps - 1))
  sched = optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(steps, 1),
                                             lr * 0.1)
  tx = optax.adamw(sched, weight_decay=weight_decay)
  return optax.chain(optax.clip_by_global_norm(grad_clip), tx) if grad_clip > 0 else tx


def lm_loss(params: Any, module: Any, batch: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy of ``batch [B, T+1]``."""
  logits = module.apply({"params": params}, batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch[:, 1:]).mean()


def token_batch(tokens: np.ndarray, rng: np.random.Generator, batch_size: int,
                seq_len: int) -> np.ndarray:
  """``[batch_size, seq_len + 1]`` random windows of ``tokens``."""
  if len(tokens) <= seq_len + 1:
    raise ValueError(f"token stream of {len(tokens)} tokens is shorter than seq_len+1="
                     f"{seq_len + 1}")
  starts = rng.integers(0, len(tokens) - seq_len - 1, batch_size)
  return np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int32)


def _seed(key: jax.Array) -> int:
  return int(jax.random.randint(key, (), 0, 2 ** 31 - 1))


def fit(hypernet: Hypernet, configs: Sequence[Any], tokens: np.ndarray, fit_config: FitConfig,
        *, key: jax.Array, log: Callable[[dict], None] | None = None
        ) -> tuple[Hypernet, list[dict]]:
  """Trains ``hypernet`` on the architectures ``configs`` and the token stream ``tokens``.

  Args:
    hypernet: initial hypernetwork.
    configs: the architecture dataset (model configs).
    tokens: 1-D token ids for language modelling.
    fit_config: :class:`FitConfig`.
    key: PRNG key; the result is a pure function of it.
    log: optional callback receiving each ``log_every``-th record.

  Returns:
    ``(trained hypernet, [{'step', 'arch', 'loss'}, ...])`` (one record per step).
  """
  if not configs:
    raise ValueError("fit needs at least one architecture config")
  hc = hypernet.config
  graphs, modules, arrays = [], [], []
  cache: dict[Any, int] = {}
  index = []
  for c in configs:
    if c not in cache:
      cache[c] = len(graphs)
      g = build(c)
      graphs.append(g)
      modules.append(model_for_config(c))
      arrays.append(encoder.graph_arrays(g, hc.lookup_bins))
    index.append(cache[c])
  n_max = -(-max(g.n_nodes for g in graphs) // 16) * 16
  arrays = [pad_arrays(a, n_max) for a in arrays]

  cuts: dict[int, tuple[Callable, Callable]] = {}

  def arch_grad(i: int, raw: dict, batch: np.ndarray) -> tuple[jax.Array, dict]:
    if i not in cuts:  # small per-architecture compiles: cut the leaves and its transpose
      cut = lambda r, g=graphs[i]: leaves_from_raw(r, g, hc)
      cuts[i] = (jax.jit(cut), jax.jit(lambda r, d, cut=cut: jax.vjp(cut, r)[1](d)[0]))
    flat = cuts[i][0](raw)
    value, dflat = _model_grad(flat, batch, modules[i])
    return value, cuts[i][1](raw, dflat)

  tx = optimizer(fit_config.lr, fit_config.steps, warmup=fit_config.warmup,
                 weight_decay=fit_config.weight_decay, grad_clip=fit_config.grad_clip)
  weights = hypernet.weights
  state = tx.init(weights)
  update = jax.jit(lambda g, s, w: _apply(tx, g, s, w))
  rng = np.random.default_rng(_seed(key))
  history = []
  for step in range(fit_config.steps):
    grads, losses, picked = None, [], []
    for _ in range(fit_config.archs_per_step):
      j = int(rng.integers(len(index)))
      i = index[j]
      batch = token_batch(tokens, rng, fit_config.batch_size, fit_config.seq_len)
      raw = _forward(weights, arrays[i], hc)
      value, draw = arch_grad(i, raw, batch)
      g = _backward(weights, arrays[i], draw, hc)
      grads = g if grads is None else jax.tree_util.tree_map(jnp.add, grads, g)
      losses.append(float(value))
      picked.append(j)
    grads = jax.tree_util.tree_map(lambda x: x / fit_config.archs_per_step, grads)
    weights, state = update(grads, state, weights)
    rec = {"step": step, "arch": picked[0], "loss": float(np.mean(losses))}
    history.append(rec)
    if log is not None and fit_config.log_every and step % fit_config.log_every == 0:
      log(rec)
  return Hypernet(weights, hc), history


# Compiled once per hypernetwork config and padded node count (forward, backward) and once per
# model architecture (its LM-loss gradient, shared by every hypernetwork trained in the process).
@functools.partial(jax.jit, static_argnums=2)
def _forward(weights: dict, arrays: dict, config: Any) -> dict:
  return raw_outputs(weights, arrays, config)


@functools.partial(jax.jit, static_argnums=3)
def _backward(weights: dict, arrays: dict, draw: dict, config: Any) -> dict:
  return jax.vjp(lambda w: raw_outputs(w, arrays, config), weights)[1](draw)[0]


@functools.partial(jax.jit, static_argnums=2)
def _model_grad(flat: dict, batch: jax.Array, module: Any) -> tuple[jax.Array, dict]:
  return jax.value_and_grad(lambda f: lm_loss(jtree.unflatten(f), module, batch))(flat)


def _apply(tx, grads, state, weights):
  updates, state = tx.update(grads, state, weights)
  return optax.apply_updates(weights, updates), state
