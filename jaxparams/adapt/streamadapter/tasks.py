"""A family of in-context tasks: each task a random mapping of input symbols to output symbols.

A task ``f`` maps each of ``n_in`` input symbols to one of ``n_out`` output symbols (drawn
uniformly, independently), and is shown as ``k`` demonstration pairs ``(x_i, f(x_i))`` with
``x_i`` uniform. A model that learns in context answers a query ``x`` with ``f(x)``; accuracy rises
with ``k`` because a query is answerable only once its input has been shown: the Bayes-optimal
learner scores ``p_k + (1 - p_k) / n_out`` with ``p_k = 1 - (1 - 1/n_in)^k``
(:func:`ideal_icl_accuracy`). Every input symbol is queried for every task.

Two token formats (``TaskFamily.format``):

* ``'pair_tokens'`` (default): one token per demonstration pair, ``1 + x * n_out + y``; context
  ``[BOS, p_1, ..., p_k]``. The model is a language model over pair tokens: the answer to query
  ``x`` is the ``y`` whose pair token ``(x, y)`` it predicts most likely next (scores = the
  next-token logits of the ``n_out`` tokens ``(x, .)``). One attention layer can learn this (attend
  to the context's pair tokens, raise their logits), so a tiny Llama learns it in context within a
  few hundred steps on a CPU. The query alone (after absorption) is ``[BOS]``.
* ``'pairs'``: two tokens per pair, ``[BOS, x_1, y_1, ..., x_k, y_k]`` (inputs ``1..n_in``, outputs
  ``n_in+1..``); query ``[BOS, x]``, ICL prompt context + ``[x]``; scores = the logits of the output
  tokens at the last position. Needs an induction circuit (two composed layers), which a tiny model
  did not form within 1100 steps here (see benchmarks/RESULTS.md).

Example:
  >>> fam = TaskFamily(n_in=4, n_out=6)
  >>> rng = np.random.default_rng(0)
  >>> tasks = fam.sample_tasks(rng, 2)
  >>> ctx = fam.context_ids(tasks, fam.sample_demos(rng, 2, k=3))
  >>> ctx.shape, int(ctx[0, 0]), fam.vocab_size
  ((2, 4), 0, 32)
  >>> fam.query_ids(2).shape, fam.icl_ids(ctx).shape
  ((2, 1, 1), (2, 1, 4))
  >>> TaskFamily(n_in=4, n_out=6, format='pairs').icl_ids(ctx[:, :3]).shape
  (2, 4, 4)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["TaskFamily", "ideal_icl_accuracy", "FORMATS"]

BOS = 0
FORMATS = ("pair_tokens", "pairs")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskFamily:
  """Random symbol-mapping tasks.

  Attributes:
    n_in: Number of input symbols (every task maps all of them).
    n_out: Number of output symbols.
    format: ``'pair_tokens'`` or ``'pairs'`` (see the module docstring).
  """
  n_in: int = 8
  n_out: int = 16
  format: str = "pair_tokens"

  def __post_init__(self):
    if self.n_in < 1 or self.n_out < 2:
      raise ValueError(f"TaskFamily needs n_in >= 1 and n_out >= 2, found n_in={self.n_in}, "
                       f"n_out={self.n_out}")
    if self.format not in FORMATS:
      raise ValueError(f"unknown TaskFamily.format {self.format!r}; valid: {', '.join(FORMATS)}")

  @property
  def pair_tokens(self) -> bool:
    return self.format == "pair_tokens"

  @property
  def vocab_size(self) -> int:
    """BOS + the format's tokens, rounded up to a multiple of 8."""
    n = 1 + (self.n_in * self.n_out if self.pair_tokens else self.n_in + self.n_out)
    return -(-n // 8) * 8

  def tokens_per_demo(self) -> int:
    return 1 if self.pair_tokens else 2

  def sample_tasks(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """``int[n, n_in]``: task ``i`` maps input ``x`` to output ``tasks[i, x]``."""
    return rng.integers(0, self.n_out, size=(n, self.n_in))

  def sample_demos(self, rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``int[n, k]`` demonstration inputs, uniform with repetition."""
    return rng.integers(0, self.n_in, size=(n, k))

  def context_ids(self, tasks: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``int32[n, 1 + k * tokens_per_demo]``: BOS then the demonstrations ``(x_i, f(x_i))``."""
    n, k = xs.shape
    ys = np.take_along_axis(tasks, xs, axis=1)
    if self.pair_tokens:
      return np.concatenate([np.zeros((n, 1), np.int32),
                             (1 + xs * self.n_out + ys).astype(np.int32)], axis=1)
    out = np.zeros((n, 1 + 2 * k), np.int32)
    out[:, 1::2] = xs + 1
    out[:, 2::2] = ys + 1 + self.n_in
    return out

  def query_ids(self, n: int) -> np.ndarray:
    """``int32[n, s, t]``: the queries alone, ``s`` sequences per task (what runs after
    absorption): ``[[BOS]]`` (pair tokens; one sequence answers every input) or ``[BOS, x]`` for
    each input ``x`` (pairs)."""
    if self.pair_tokens:
      return np.zeros((n, 1, 1), np.int32)
    out = np.zeros((n, self.n_in, 2), np.int32)
    out[..., 1] = np.arange(self.n_in) + 1
    return out

  def icl_ids(self, context: np.ndarray) -> np.ndarray:
    """``int32[n, s, t]``: the ICL prompts (context, then the query input for ``'pairs'``)."""
    if self.pair_tokens:
      return context[:, None, :]
    n = context.shape[0]
    ctx = np.broadcast_to(context[:, None, :], (n, self.n_in, context.shape[1]))
    xq = np.broadcast_to(np.arange(self.n_in, dtype=np.int32) + 1, (n, self.n_in))
    return np.concatenate([ctx, xq[..., None]], axis=-1)

  def scores(self, last_logits: jax.Array) -> jax.Array:
    """``[n, n_in, n_out]`` answer scores from the last-position logits ``[n, s, vocab]``."""
    if self.pair_tokens:
      ids = 1 + np.arange(self.n_in)[:, None] * self.n_out + np.arange(self.n_out)[None, :]
      return last_logits[:, 0][:, ids]
    return last_logits[:, :, 1 + self.n_in: 1 + self.n_in + self.n_out]

  def lm_loss(self, logits: jax.Array, ids: jax.Array) -> jax.Array:
    """Mean training loss of the base model on contexts ``ids`` given ``logits`` of
    ``ids[:, :-1]``: next-token cross-entropy (pair tokens), or on the output tokens (pairs)."""
    import optax  # pylint: disable=g-import-not-at-top
    logits = logits.astype(jnp.float32)
    if self.pair_tokens:
      return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, 1::2], ids[:, 2::2]).mean()


def ideal_icl_accuracy(k: int, n_in: int, n_out: int) -> float:
  """Accuracy of the Bayes-optimal in-context learner after ``k`` uniform demonstrations.

  Example:
    >>> round(ideal_icl_accuracy(0, 8, 16), 4), round(ideal_icl_accuracy(8, 8, 16), 3)
    (0.0625, 0.678)
  """
  p = 1.0 - (1.0 - 1.0 / n_in) ** k
  return p + (1.0 - p) / n_out
