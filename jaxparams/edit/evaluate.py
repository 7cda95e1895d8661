"""Scoring of prompts and targets on a causal LM (CounterFact-style comparisons).

Sequences are ``<s> prompt target``, right-padded with an attention mask; the log-probability of
a target is the sum over its tokens (teacher forcing), so multi-word targets are scored whole.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models import Llama, LlamaConfig
  >>> from jaxparams.edit import facts
  >>> fs = facts.load_facts_set(); tok = facts.build_tokenizer(fs)
  >>> cfg = LlamaConfig(vocab_size=256, hidden_size=16, intermediate_size=32,
  ...                   num_hidden_layers=1, num_attention_heads=2)
  >>> m = Llama(cfg); p = m.init(jax.random.key(0), jnp.zeros((1, 2), int))['params']
  >>> lp = target_logprobs(m, p, tok, ['Jorah Wexgrave plays the'], ['harp'])
  >>> lp.shape
  (1,)
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.edit import facts as facts_lib

__all__ = ["encode_prompts", "next_logits", "target_logprobs", "encode_pairs"]


def _pad(rows: Sequence[Sequence[int]], multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
  n = max(len(r) for r in rows)
  n = -(-n // multiple) * multiple
  ids = np.zeros((len(rows), n), np.int32)
  mask = np.zeros((len(rows), n), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
  return ids, mask


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """``(ids, mask)`` of ``<s> text`` rows, right-padded (to a multiple of 8)."""
  bos = tokenizer.token_to_id(facts_lib.BOS)
  return _pad([[bos] + facts_lib.encode_words(tokenizer, t, what="prompt") for t in texts])


@functools.partial(jax.jit, static_argnums=0)
def _last_logits(module, params, ids, mask):
  logits = module.apply({"params": params}, ids, attention_mask=mask)
  last = mask.sum(-1) - 1
  return jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def next_logits(module: Any, params: Any, encoded: tuple[np.ndarray, np.ndarray]) -> jax.Array:
  """Logits of the next token after each prompt, ``[n, vocab]``."""
  ids, mask = encoded
  return _last_logits(module, params, jnp.asarray(ids), jnp.asarray(mask))


def encode_pairs(tokenizer: Any, prompts: Sequence[str], targets: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(ids, mask, target_mask)``: ``<s> prompt target`` rows; ``target_mask`` marks positions
  whose *next* token is a target token."""
  bos = tokenizer.token_to_id(facts_lib.BOS)
  rows, tmask = [], []
  for p, t in zip(prompts, targets, strict=True):
    pi = [bos] + facts_lib.encode_words(tokenizer, p, what="prompt")
    ti = facts_lib.encode_words(tokenizer, t, what="target")
    rows.append(pi + ti)
    tmask.append([0] * (len(pi) - 1) + [1] * len(ti))
  ids, mask = _pad(rows)
  tm = np.zeros_like(ids)
  for i, r in enumerate(tmask):
    tm[i, :len(r)] = r
  return ids, mask, tm


@functools.partial(jax.jit, static_argnums=0)
def _seq_logprob(module, params, ids, mask, tmask):
  logits = module.apply({"params": params}, ids, attention_mask=mask).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits[:, :-1], -1)
  tok = jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
  return (tok * tmask[:, :-1]).sum(-1)


def target_logprobs(module: Any, params: Any, tokenizer: Any, prompts: Sequence[str],
                    targets: Sequence[str], *, batch_size: int = 512) -> jax.Array:
  """``log P(target | <s> prompt)`` for each pair, ``float32[n]``."""
  ids, mask, tm = encode_pairs(tokenizer, prompts, targets)
  out = []
  for s in range(0, len(ids), batch_size):
    sl = slice(s, s + batch_size)
    out.append(_seq_logprob(module, params, jnp.asarray(ids[sl]), jnp.asarray(mask[sl]),
                            jnp.asarray(tm[sl])))
  return jnp.concatenate(out)
