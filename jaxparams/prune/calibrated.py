"""Calibrated pruning of a Flax model (Wanda, SparseGPT) with statistics from ``jaxparams.calib``.

As in the reference code, layers are pruned in forward order, one transformer block at a time:
the statistics of a block's Linear layers are collected with the blocks before it already pruned
(``sequential=True``), so each layer sees the inputs it will see after pruning. With
``sequential=False`` one pass on the dense model gives every layer's statistics.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxparams as jp
  >>> mlp = jp.models.MLP(features=(16, 4))
  >>> params = mlp.init(jax.random.key(0), jnp.ones((1, 8)))['params']
  >>> x = jax.random.normal(jax.random.key(1), (64, 8))
  >>> pruned, report = prune_model(mlp, params, [x], 'wanda', sparsity=0.5, where='**/kernel')
  >>> report
  {'layers_0/kernel': 0.5, 'layers_1/kernel': 0.5}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from flax import linen as nn

from jaxparams import calib
from jaxparams import io as jio
from jaxparams import tree as jtree
from jaxparams.prune.api import default_prune_where, prune_tree
from jaxparams.prune.records import CALIBRATED

__all__ = ["prune_hf_model", "prune_model"]


def prune_model(module: nn.Module, params: Any, batches: Any, method: str, *, where: Any = None,
                sequential: bool = True, **fields: Any) -> tuple[Any, dict[str, float]]:
  """Prunes a model's Linear kernels with a calibrated method.

  Args:
    module: the Flax module (its Dense-like layers are captured by ``jaxparams.calib``).
    params: its parameters.
    batches: calibration batches (see :func:`jaxparams.calib.collect_stats`); an
      ``attention_mask`` keeps padding out of the statistics.
    method: ``'wanda'`` or ``'sparsegpt'``.
    where: selector of the kernels (default :func:`jaxparams.prune.default_prune_where`).
    sequential: recollect each block's statistics after the blocks before it are pruned.
    **fields: the method's config (``sparsity``, ``pattern``, ``block_size``, ``bits``...).

  Returns:
    ``(pruned params, {path: achieved sparsity})``.
  """
  if method not in CALIBRATED:
    raise ValueError(f"prune_model runs calibrated methods {list(CALIBRATED)}; for {method!r} "
                     "use prune_tree (no data needed)")
  flat = jtree.flatten(params)
  chosen = jtree.select(flat, where if where is not None else default_prune_where, flat=True)
  if sequential:
    order = [p for p in calib.linear_order(module, params,
                                           calib.capture.check_batches(batches)[0])
             if p in chosen]
    missing = sorted(set(chosen) - set(order))
    if missing:
      raise ValueError(f"prune_model: {missing[:3]} are not kernels of Linear layers the forward "
                       "pass calls")
    groups = calib.sequential.block_groups(order)
  else:
    groups = [list(chosen)]
  report: dict[str, float] = {}

  def step(paths: list[str], stats: dict) -> Any:
    nonlocal params
    params, rep = prune_tree(params, method, where=paths, stats=stats, **fields)
    report.update(rep)
    return params

  # the one sequential block driver: each block's statistics with the blocks before it pruned
  calib.sequential.run_groups(module, params, batches, groups, step,
                              runner=calib.stats_runner(module, chosen))
  return params, report


def prune_hf_model(src: str | Path, out_dir: str | Path, method: str, texts: Sequence[str], *,
                   max_length: int = 128, batch_size: int = 16, overwrite: bool = False,
                   where: Any = None, **fields: Any) -> dict[str, float]:
  """Calibrated pruning of an HF checkpoint (a model family of :func:`jaxparams.models.from_hf`).

  Loads the model (the whole model in memory, unlike :func:`prune_checkpoint`), tokenizes
  ``texts`` with the folder's ``tokenizer.json``, runs :func:`prune_model` and writes the pruned
  checkpoint with :func:`jaxparams.models.to_hf` (atomic; tokenizer and sentence-transformers
  files copied), in the source's dtype.

  Returns:
    ``{kernel path: achieved sparsity}``.
  """
  from jaxparams import models  # pylint: disable=import-outside-toplevel
  from jaxparams.models.hf_open import hf_tokenizer  # pylint: disable=import-outside-toplevel
  src = Path(src)
  jio.check_output_dir(Path(out_dir), overwrite)
  tok = hf_tokenizer(src, purpose="calibrated pruning needs the model's tokenizer")
  module, params, config = models.from_hf(src)
  dtype = np.asarray(jtree.flatten(params)[next(iter(jtree.flatten(params)))]).dtype
  is_bert = type(config).__name__.lower().startswith("bert")
  batches = calib.text_batches(tok, texts, batch_size=batch_size, max_length=max_length,
                               token_type_ids=is_bert)
  params, report = prune_model(module, params, batches, method, where=where, **fields)
  models.to_hf(params, config, out_dir, copy_from=src, overwrite=overwrite, dtype=dtype)
  return report
