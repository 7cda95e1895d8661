"""EATA (Niu et al., ICML 2022) and Tent test-time adaptation of normalisation affine params.

Both adapt only the ``scale``/``bias`` of batch-statistics norms (``is_affine`` picks them) with
SGD + momentum, one step per incoming test batch, and predict with the pre-update forward pass.

* **Tent**: loss = mean entropy ``E = -Σ p log p`` of the batch.
* **EATA**: only *reliable* samples (``E < e_margin``, default ``0.4 ln C``) that are
  *non-redundant* (``|cos(m, p)| < d_margin``, ``m`` the moving average of the selected samples'
  probabilities, ``m ← 0.9 m + 0.1 mean(p_selected)``, the filter off until ``m`` exists) count,
  each weighted by ``exp(e_margin - E)`` (no gradient through the weight); plus the anti-forgetting
  penalty ``β Σ F_i (θ_i - θ_i⁰)²`` with ``F`` the diagonal Fisher of the pseudo-label
  cross-entropy on clean in-distribution data (:func:`fisher_diagonal`). A batch with no selected
  sample changes nothing.

Example:
  >>> import jax.numpy as jnp
  >>> round(float(EATAConfig().margin(1000)), 6)
  2.763102
  >>> m, w, ma, has = select(jnp.zeros((2, 1000)), jnp.zeros(1000), jnp.bool_(False),
  ...                        e_margin=2.763102, d_margin=0.05)
  >>> m.tolist()   # uniform predictions (E = ln 1000 = 6.9) are unreliable
  [False, False]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["EATAConfig", "AdaptState", "entropy", "select", "fisher_diagonal", "split", "merge",
           "make_adapter", "is_norm_affine", "METHODS"]

METHODS = ("tent", "eata")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EATAConfig:
  """Hyperparameters (defaults: the paper's ImageNet-C settings).

  Attributes:
    e_margin: Entropy margin ``E₀``; ``None`` means ``0.4 ln(num_classes)``.
    d_margin: Redundancy threshold ``ε`` on ``|cos(m, p)|`` (0.05 for 1000 classes; with few
      classes the probability vectors are less orthogonal, e.g. 0.4 for 10).
    fisher_alpha: ``β``, weight of the Fisher anti-forgetting penalty.
    lr: SGD learning rate.
    momentum: SGD momentum.
  """
  e_margin: float | None = None
  d_margin: float = 0.05
  fisher_alpha: float = 2000.0
  lr: float = 2.5e-4
  momentum: float = 0.9

  def margin(self, num_classes: int) -> float:
    return self.e_margin if self.e_margin is not None else 0.4 * math.log(num_classes)


class AdaptState(NamedTuple):
  """What carries over between test batches."""
  affine: Any
  opt_state: Any
  ma: jax.Array          # moving average of selected probabilities [C]
  has_ma: jax.Array      # bool: m exists yet
  n_selected: jax.Array  # total samples used for updates so far
  n_updates: jax.Array   # total batches that updated the params


def entropy(logits: jax.Array) -> jax.Array:
  """Per-sample entropy ``-Σ softmax · log_softmax`` (nats)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def select(logits: jax.Array, ma: jax.Array, has_ma: jax.Array, *, e_margin: float,
           d_margin: float) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """EATA's sample selection: ``(mask, weights, new_ma, new_has_ma)``.

  ``weights = exp(e_margin - E)`` (zero outside ``mask``); ``ma`` is updated from the selected
  samples only (unchanged when none is selected).
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  ent = entropy(logits)
  reliable = ent < e_margin
  cos = jnp.abs(probs @ ma) / (jnp.linalg.norm(probs, axis=-1) * jnp.linalg.norm(ma) + 1e-8)
  mask = reliable & jnp.where(has_ma, cos < d_margin, True)
  n = jnp.sum(mask)
  mean_sel = jnp.sum(jnp.where(mask[:, None], probs, 0.0), axis=0) / jnp.maximum(n, 1)
  new_ma = jnp.where(n > 0, jnp.where(has_ma, 0.9 * ma + 0.1 * mean_sel, mean_sel), ma)
  weights = jnp.where(mask, jnp.exp(e_margin - ent), 0.0)
  return mask, jax.lax.stop_gradient(weights), new_ma, has_ma | (n > 0)


def is_norm_affine(path: str) -> bool:
  """Default ``is_affine``: leaves ``bn_*/scale|bias`` (and ``*norm*/scale|bias``)."""
  parts = path.split("/")
  return len(parts) >= 2 and parts[-1] in ("scale", "bias") and (
      parts[-2].startswith("bn") or "norm" in parts[-2])


def split(params: Any, is_affine: Callable[[str], bool] = is_norm_affine) -> tuple[dict, dict]:
  """``(affine, frozen)``: flat ``{path: leaf}`` dicts of the adapted and the fixed leaves.

  Raises:
    ValueError: if no leaf is affine (a selector matching nothing is an error).
  """
  from jaxparams import tree as jtree  # pylint: disable=g-import-not-at-top
  flat = jtree.flatten(params)
  affine = {k: v for k, v in flat.items() if is_affine(k)}
  if not affine:
    raise ValueError(f"no normalisation affine parameters found among {sorted(flat)[:8]}...")
  return affine, {k: v for k, v in flat.items() if k not in affine}


def merge(affine: dict, frozen: dict) -> Any:
  """Inverse of :func:`split` (a nested params dict)."""
  from jaxparams import tree as jtree  # pylint: disable=g-import-not-at-top
  return jtree.unflatten({**frozen, **affine})


def fisher_diagonal(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any,
                    x: jax.Array, *, batch_size: int = 64,
                    is_affine: Callable[[str], bool] = is_norm_affine) -> dict:
  """Diagonal Fisher of the affine leaves: mean over batches of ``(∇ CE(logits, argmax))²``."""
  affine, frozen = split(params, is_affine)

  @jax.jit
  def sq_grad(a, xb):
    def loss(a):
      logits = apply_fn(merge(a, frozen), xb)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, jax.lax.stop_gradient(jnp.argmax(logits, -1))).mean()
    return jax.tree.map(jnp.square, jax.grad(loss)(a))

  batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
  total = None
  for xb in batches:
    g = sq_grad(affine, xb)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  return jax.tree.map(lambda t: t / len(batches), total)


def make_adapter(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, *,
                 method: str = "eata", config: EATAConfig = EATAConfig(), num_classes: int,
                 fisher: dict | None = None,
                 is_affine: Callable[[str], bool] = is_norm_affine
                 ) -> tuple[AdaptState, Callable[[AdaptState, jax.Array], tuple[AdaptState, jax.Array]], Callable[[AdaptState], Any]]:
  """``(state, step, params_of)`` for Tent or EATA on ``params``.

  ``step(state, x) -> (state, logits)`` adapts on one test batch (jitted) and returns the
  predictions of the forward pass before the update; ``params_of(state)`` is the full params.
  The EATA anchor ``θ⁰`` is the affine params given here; ``fisher=None`` drops the penalty.

  Raises:
    ValueError: for an unknown ``method``.
  """
  if method not in METHODS:
    raise ValueError(f"unknown adaptation method {method!r}; valid: {', '.join(METHODS)}")
  affine, frozen = split(params, is_affine)
  anchor = affine
  tx = optax.sgd(config.lr, momentum=config.momentum)
  e_margin = config.margin(num_classes)
  state = AdaptState(affine, tx.init(affine), jnp.zeros(num_classes, jnp.float32),
                     jnp.bool_(False), jnp.int32(0), jnp.int32(0))

  @jax.jit
  def step(state: AdaptState, x: jax.Array) -> tuple[AdaptState, jax.Array]:
    def loss_fn(a):
      logits = apply_fn(merge(a, frozen), x)
      ent = entropy(logits)
      if method == "tent":
        return jnp.mean(ent), (logits, jnp.ones(ent.shape, bool), state.ma, state.has_ma)
      mask, w, ma, has = select(jax.lax.stop_gradient(logits), state.ma, state.has_ma,
                                e_margin=e_margin, d_margin=config.d_margin)
      loss = jnp.sum(ent * w) / jnp.maximum(jnp.sum(mask), 1)
      if fisher is not None:
        loss += config.fisher_alpha * sum(
            jnp.sum(fisher[k] * jnp.square(a[k] - anchor[k])) for k in a)
      return loss, (logits, mask, ma, has)

    (_, (logits, mask, ma, has)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.affine)
    updates, opt_state = tx.update(grads, state.opt_state, state.affine)
    new_affine = optax.apply_updates(state.affine, updates)
    go = jnp.any(mask)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(go, a, b), new, old)
    n = jnp.sum(mask).astype(jnp.int32)
    return AdaptState(keep(new_affine, state.affine), keep(opt_state, state.opt_state), ma, has,
                      state.n_selected + n, state.n_updates + go.astype(jnp.int32)), logits

  return state, step, lambda s: merge(s.affine, frozen)
