"""Step Law: optimal learning rate and batch size from model and data size.

Li et al. (StepFun), "Predictable Scale: Part I -- Optimal Hyperparameter
Scaling Law in Large Language Model Pretraining" (arXiv 2503.04715), fitted on
3,700 LLMs (AdamW, final lr_min 1e-5), within 0.09% of the searched optimum:

  η_opt(N, D) = 1.79 · N^-0.713 · D^0.307
  B_opt(D)    = 0.58 · D^0.571          (tokens; independent of N)

with N the *non-embedding* parameter count and D the training tokens.

Example:
  >>> r = step_law(1e9, 1e11)
  >>> f"{r.learning_rate:.3g}", f"{r.batch_tokens:.3g}"
  ('0.00163', '1.11e+06')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxparams import tree as jtree

__all__ = [
    "StepLaw", "apply_step_law", "non_embedding_params", "step_law", "step_law_batch_tokens",
    "step_law_lr",
]

LR_COEF, LR_N_EXP, LR_D_EXP = 1.79, -0.713, 0.307
BATCH_COEF, BATCH_D_EXP = 0.58, 0.571


def _positive(name: str, x: float) -> float:
  x = float(x)
  if not x > 0:
    raise ValueError(f"step law: {name} must be > 0, found {x}")
  return x


def step_law_lr(n_params: float, n_tokens: float) -> float:
  """η_opt = 1.79 · N^-0.713 · D^0.307 (N non-embedding params, D tokens)."""
  return LR_COEF * _positive("n_params", n_params) ** LR_N_EXP * \
      _positive("n_tokens", n_tokens) ** LR_D_EXP


def step_law_batch_tokens(n_tokens: float) -> float:
  """B_opt = 0.58 · D^0.571 tokens per batch."""
  return BATCH_COEF * _positive("n_tokens", n_tokens) ** BATCH_D_EXP


@dataclasses.dataclass(frozen=True)
class StepLaw:
  """Step-law hyperparameters.

  Attributes:
    learning_rate: η_opt (peak LR).
    batch_tokens: B_opt in tokens.
    batch_size: sequences per batch (``round(B / seq_len)``, at least 1) when
      a sequence length was given, else None.
  """
  learning_rate: float
  batch_tokens: float
  batch_size: int | None = None


def step_law(n_params: float, n_tokens: float, seq_len: int | None = None) -> StepLaw:
  """Both step-law optima; with ``seq_len`` also the batch size in sequences."""
  lr = step_law_lr(n_params, n_tokens)
  b = step_law_batch_tokens(n_tokens)
  bs = None if seq_len is None else max(1, int(round(b / _positive("seq_len", seq_len))))
  return StepLaw(lr, b, bs)


def non_embedding_params(params: Any, exclude: Sequence[str] = (
    "**embed**", "**lm_head**", "**pos_embed**", "**position_embeddings**")) -> int:
  """Parameter count without embedding / LM-head leaves (the N of the step law).

  Example:
    >>> import numpy as np
    >>> non_embedding_params({'embed_tokens': {'embedding': np.zeros((10, 4))},
    ...                       'layers_0': {'kernel': np.zeros((4, 4))}})
    16
  """
  rules = [jtree.compile_pattern(g) for g in exclude]
  return int(sum(np.size(x) for p, x in jtree.flatten(params).items()
                 if not any(r(p) for r in rules)))


def apply_step_law(config: Any, *, n_params: float, n_tokens: float, seq_len: int | None = None,
                   lr_field: str = "learning_rate", batch_field: str = "batch_size") -> Any:
  """A copy of a training config with the step-law LR and batch size.

  Works for frozen dataclasses (``dataclasses.replace``), dicts and
  ml_collections ``ConfigDict`` s. ``batch_field`` gets sequences when
  ``seq_len`` is given, else tokens.

  Raises:
    ValueError: if the config lacks one of the fields.

  Example:
    >>> cfg = apply_step_law({'learning_rate': 1.0, 'batch_size': 1}, n_params=1e9,
    ...                      n_tokens=1e11, seq_len=4096)
    >>> round(cfg['learning_rate'], 5), cfg['batch_size']
    (0.00163, 270)
  """
  law = step_law(n_params, n_tokens, seq_len)
  values = {lr_field: law.learning_rate,
            batch_field: law.batch_size if seq_len is not None else int(round(law.batch_tokens))}
  if dataclasses.is_dataclass(config) and not isinstance(config, type):
    names = {f.name for f in dataclasses.fields(config)}
    missing = sorted(set(values) - names)
    if missing:
      raise ValueError(f"apply_step_law: {type(config).__name__} has no field(s) {missing}; "
                       f"fields: {sorted(names)}")
    return dataclasses.replace(config, **values)
  if hasattr(config, "copy_and_resolve_references"):      # ml_collections.ConfigDict
    new = config.copy_and_resolve_references()
    missing = sorted(k for k in values if k not in new)
    if missing:
      raise ValueError(f"apply_step_law: config has no field(s) {missing}; fields: {sorted(new)}")
    for k, v in values.items():
      setattr(new, k, v)
    return new
  if isinstance(config, dict):
    missing = sorted(k for k in values if k not in config)
    if missing:
      raise ValueError(f"apply_step_law: config has no field(s) {missing}; fields: {sorted(config)}")
    return {**config, **values}
  raise ValueError(f"apply_step_law: unsupported config type {type(config).__name__} "
                   "(dataclass, dict or ConfigDict)")
