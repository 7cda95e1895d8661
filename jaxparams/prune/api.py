"""Pruning over a parameter tree or a checkpoint on disk, through the transform drivers.

Example:
  >>> import jax, jax.numpy as jnp
  >>> params = {'layers_0': {'mlp': {'kernel': jax.random.normal(jax.random.key(0), (8, 4)),
  ...                                'bias': jnp.ones(4)}},
  ...           'embed': {'embedding': jnp.ones((10, 8))}}
  >>> pruned, report = prune_tree(params, 'magnitude', pattern='2:4')
  >>> report
  {'layers_0/mlp/kernel': 0.5}
  >>> float(pruned['embed']['embedding'].mean())      # embeddings are kept by default
  1.0
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxparams import io as jio
from jaxparams import transform as jt
from jaxparams import tree as jtree
from jaxparams.prune.records import CALIBRATED, PRUNERS

__all__ = ["default_prune_where", "prune_checkpoint", "prune_tree", "sparsity_of"]

_KEEP = re.compile(r"(^|[/.])(embed[^/.]*|wte|wpe|lm_head|head|pooler|classifier|score|"
                   r"[^/.]*norm[^/.]*)([/.]|$)", re.IGNORECASE)


def default_prune_where(path: str, leaf: Any) -> bool:
  """Linear weight matrices, not embeddings, norms, heads or poolers.

  Works on tree paths (``layers_0/mlp/kernel``) and HF names (``model.layers.0.mlp.up_proj.weight``).

  Example:
    >>> import numpy as np
    >>> [default_prune_where(p, np.zeros((4, 4))) for p in
    ...  ('layers_0/mlp/kernel', 'model.embed_tokens.weight', 'lm_head.weight', 'pooler/dense/kernel')]
    [True, False, False, False]
  """
  last = re.split(r"[/.]", path)[-1]
  return (getattr(leaf, "ndim", len(getattr(leaf, "shape", ()))) == 2
          and last in ("kernel", "weight") and not _KEEP.search(path))


def sparsity_of(x: Any) -> float | jax.Array:
  """Fraction of exact zeros (a traced scalar under ``jit``/``vmap``).

  Example:
    >>> sparsity_of(jnp.array([0., 1.]))
    0.5
  """
  s = jnp.mean(jnp.asarray(x) == 0)
  return s if isinstance(s, jax.core.Tracer) else float(s)


def _config(method: str, fields: Mapping[str, Any]):
  return PRUNERS.get(method).make_config(**fields)


def prune_tree(params: Any, method: str, *, where: Any = None, key: jax.Array | None = None,
               stats: Mapping[str, Any] | None = None, **fields: Any) -> tuple[Any, dict]:
  """Prunes the selected leaves of ``params`` with one method.

  Args:
    params: a parameter pytree (Flax kernels ``[d_in, d_out]``).
    method: a name from ``PRUNERS.names()``.
    where: selector (default :func:`default_prune_where`).
    key: PRNG key (``random``).
    stats: ``{path: statistics}`` for calibrated methods (``wanda``, ``sparsegpt``), e.g. from
      :func:`jaxparams.calib` or ``X^T X`` matrices.
    **fields: the method's config fields (``sparsity=0.5``, ``pattern='2:4'``...).

  Returns:
    ``(pruned params, {path: achieved sparsity})``.
  """
  record = PRUNERS.get(method)
  config = record.make_config(**fields)
  flat = jtree.flatten(params)
  chosen = jtree.select(flat, where if where is not None else default_prune_where, flat=True)
  leaf_options = None
  if method in CALIBRATED:
    if stats is None:
      raise ValueError(f"pruning method {method!r} needs calibration statistics: pass "
                       "stats={path: X^T X} (see jaxparams.calib)")
    missing = [p for p in chosen if p not in stats]
    if missing:
      raise ValueError(f"pruning method {method!r}: no statistics for {missing[:3]} "
                       f"({len(missing)} of {len(chosen)} selected leaves)")
    leaf_options = lambda p: {"stats": stats[p]}
  out = jt.apply_tree(record, params, config=config, key=key, where=chosen,
                      leaf_options=leaf_options)
  out_flat = jtree.flatten(out)
  return out, {p: sparsity_of(out_flat[p]) for p in chosen}


def prune_checkpoint(src: str | Path, out_dir: str | Path, method: str, *,
                     where: Any = None, key: jax.Array | None = None, overwrite: bool = False,
                     progress: Callable[[int, int, int], None] | None = None,
                     **fields: Any) -> dict[str, Any]:
  """Streams a data-free pruning method over a safetensors checkpoint, tensor by tensor.

  Weights are Hugging Face ``[out, in]`` matrices (N:M groups run along ``in``); every other
  tensor and the model's config/tokenizer files are copied. The output is written atomically
  and loads wherever the input did.

  Args:
    src: a model folder, safetensors file or sharded index.
    out_dir: the output folder.
    method: ``'magnitude'`` or ``'random'`` (calibrated methods need a model forward pass).
    where: selector over tensor names, restricted to matrices (default
      :func:`default_prune_where`).
    key: PRNG key for ``random``.
    overwrite: replace an existing output.
    progress: ``(done, total, bytes)`` callback.
    **fields: the method's config fields.

  Returns:
    The driver's summary plus ``'sparsity'``: ``{tensor: achieved sparsity}``.
  """
  if method in CALIBRATED:
    raise ValueError(f"pruning method {method!r} needs calibration: use prune_tree with "
                     "statistics (streaming calibrated pruning is not built yet)")
  record = PRUNERS.get(method)
  config = record.make_config(**fields)
  if method == "random" and key is None:
    key = jax.random.key(0)
  with jio.open_checkpoint(src) as reader:
    names = list(reader.names())
    specs = {n: reader.spec(n) for n in names}
    shapes = {n: jax.ShapeDtypeStruct(tuple(specs[n].shape), jnp.float32) for n in names}
    if where is None:
      chosen = set(jtree.select(shapes, default_prune_where, flat=True))
    else:   # the user's selection, restricted to matrices (norms and biases are never pruned)
      chosen = {n for n in jtree.select(shapes, where, flat=True) if len(shapes[n].shape) == 2}
      if not chosen:
        raise ValueError(f"{src}: the selection {where!r} matches no weight matrix")
    tasks = [jt.StreamTask(n, (("src", n),), record=record if n in chosen else None,
                           config=config, options={"input_axis": 1} if n in chosen else None)
             for n in names]
    summary = jt.stream_checkpoints(tasks, {"src": reader}, out_dir, key=key,
                                    overwrite=overwrite, progress=progress,
                                    finalize=lambda w: _copy_side_files(src, w))
  with jio.open_checkpoint(out_dir) as r:
    summary["sparsity"] = {n: sparsity_of(r.read(n)) for n in sorted(chosen)}
  return summary


def _copy_side_files(src: str | Path, writer: Any) -> None:
  folder = Path(src) if Path(src).is_dir() else Path(src).parent
  writer.copy_from(folder, ("config.json", *jio.TOKENIZER_FILES,
                            *jio.SENTENCE_TRANSFORMERS_FILES))
