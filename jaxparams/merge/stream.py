"""Out-of-core merging of HF safetensors checkpoints, tensor by tensor.

:func:`merge_checkpoints` turns a mergekit recipe into one
:class:`~jaxparams.transform.StreamTask` per output tensor (the plan:
:func:`~jaxparams.merge.plan.plan_merge`; the config of the method's record
resolved per tensor, so gradients and filters give per-layer values) and runs
them with the transform layer's streaming driver
(:func:`jaxparams.transform.stream_checkpoints`): inputs read ahead in a
background thread that is stopped before any cleanup, the record under
``jax.jit`` compiled once per shape/dtype (per-layer values are traced), the
record's checks (shapes, non-float tensors, parameter ranges, NaN/Inf fused
into the computation), an atomic sharded output written tensor by tensor.
Peak memory is a few tensors per input (the output is not buffered in
memory; the next tensor computes while the previous one is written). On any error or Ctrl-C no
output folder is left behind. With several GPUs/TPUs (or ``shard=True``),
large tensors are split along axis 0 across all devices.

Random methods (DARE, DELLA) use one key per tensor, derived from the run's
key and the tensor's name (:func:`tensor_key`, the tree driver's too), so
results do not depend on the order in which tensors are processed.

Example:
  >>> import numpy as np, tempfile, os
  >>> from jaxparams.io import save_safetensors, load_safetensors
  >>> d = tempfile.mkdtemp()
  >>> for m, v in [('a', 1.0), ('b', 3.0)]:
  ...   save_safetensors({'w': np.full((2, 2), v, np.float32)}, os.path.join(d, m))
  >>> recipe = {'merge_method': 'linear',
  ...           'models': [{'model': os.path.join(d, 'a'), 'parameters': {'weight': 1.0}},
  ...                      {'model': os.path.join(d, 'b'), 'parameters': {'weight': 1.0}}]}
  >>> _ = merge_checkpoints(recipe, os.path.join(d, 'out'), progress=False)
  >>> load_safetensors(os.path.join(d, 'out'))['w'].tolist()
  [[2.0, 2.0], [2.0, 2.0]]
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxparams.io import check_output_dir, open_checkpoint, parse_size
from jaxparams.io.input_guard import check_unchanged, snapshot_inputs
from jaxparams.merge.model_card import model_card, recipe_yaml
from jaxparams.merge.plan import TensorTask, count_layers, plan_merge
from jaxparams.merge.progress import progress_bar
from jaxparams.merge.recipe import Recipe, load_recipe
from jaxparams.merge.registry import METHODS, MergeMethod, get_method, tensor_key
from jaxparams.merge.side_files import read_source_config, write_side_files
from jaxparams.transform import (NonFiniteError, StreamTask, Transform, make_sharding,
                                 stream_checkpoints)

__all__ = ["merge_checkpoints", "plan_checkpoints", "tensor_key", "parse_size",
           "stream_tasks"]

_log = logging.getLogger(__name__)


def _as_method(method: Any) -> MergeMethod:
  if isinstance(method, MergeMethod):
    return method
  if isinstance(method, Transform):
    return MergeMethod(method)
  raise ValueError(f"method must be a MergeMethod or a Transform record, got "
                   f"{type(method).__name__}")


def _data_aware(name: str) -> bool:
  """Whether ``name`` is a data-aware merge (``merge.learned``: imported only then)."""
  if name in METHODS:  # the data-free records; data-aware names are never among them
    return False
  from jaxparams.merge.learned import checkpoints as data_aware  # pylint: disable=import-outside-toplevel
  return name in data_aware.DATA_AWARE_METHODS


def plan_checkpoints(recipe: str | Path | Mapping[str, Any] | Recipe) -> list[TensorTask]:
  """The per-tensor plan of a recipe over its checkpoints (headers only; nothing merged).

  Raises the same input errors as :func:`merge_checkpoints` (tensor sets,
  shapes, vocabularies, unknown method or parameter).
  """
  recipe = load_recipe(recipe)
  if _data_aware(recipe.merge_method):
    raise ValueError(f"{recipe.source or 'recipe'}: {recipe.merge_method!r} captures statistics "
                     "from its calibration text before it can plan; a dry run lists data-free "
                     "merges only (run without --dry-run)")
  method = get_method(recipe.merge_method)
  folders = {ref: recipe.resolve_model(ref) for ref in recipe.model_names()}
  with contextlib.ExitStack() as stack:
    readers = {ref: stack.enter_context(open_checkpoint(p)) for ref, p in folders.items()}
    return plan_merge(recipe, readers, method)


def stream_tasks(tasks: list[TensorTask], method: MergeMethod, readers: Mapping[str, Any],
                 recipe: Recipe) -> list[StreamTask]:
  """The driver's tasks: the record's config resolved per tensor, dtypes from the headers.

  Inputs are computed in ``recipe.dtype`` (else their promoted dtype) and
  written in ``recipe.out_dtype`` (else the compute dtype); non-floating
  tensors keep their dtype (the record copies them when identical).
  """
  where = recipe.source or "recipe"
  compute_req = None if recipe.dtype is None else jnp.dtype(recipe.dtype)
  out_req = None if recipe.out_dtype is None else jnp.dtype(recipe.out_dtype)
  cache: dict[Any, Any] = {}
  out = []
  for t in tasks:
    ck = (len(t.models), tuple(sorted((k, tuple(v)) for k, v in t.model_params.items())),
          tuple(sorted((k, _hashable(v)) for k, v in t.global_params.items())))
    cfg = cache.get(ck)
    if cfg is None:
      try:
        cfg = method.resolve_config(len(t.models), {k: list(v) for k, v in
                                                    t.model_params.items()},
                                    dict(t.global_params), name=t.name)
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
      cache[ck] = cfg
    dtypes = [readers[m].spec(n).dtype for m, n in t.inputs]
    if all(jnp.issubdtype(d, jnp.floating) for d in dtypes):
      compute = compute_req or jnp.result_type(*dtypes)
      out_dtype = out_req or compute
    else:
      compute = out_dtype = None
    out.append(StreamTask(name=t.name, inputs=t.inputs, record=method.record, config=cfg,
                          has_base=t.base is not None,
                          labels=tuple(f"model {m!r}" for m, _ in t.inputs),
                          compute_dtype=compute, out_dtype=out_dtype, meta=t,
                          # vocabulary rows are aligned in the reader thread: other shapes
                          out_shape=None if t.vocab else
                          tuple(readers[t.inputs[0][0]].spec(t.inputs[0][1]).shape)))
  return out


def _hashable(v: Any) -> Any:
  if isinstance(v, (list, tuple)):
    return tuple(_hashable(x) for x in v)
  return v


def merge_checkpoints(recipe: str | Path | Mapping[str, Any] | Recipe, out_dir: str | Path, *,
                      key: jax.Array | None = None, seed: int = 0, overwrite: bool = False,
                      max_shard_bytes: int | float | str = 5e9, allow_nonfinite: bool = False,
                      copy_tokenizer: bool = True, prefetch: int = 2,
                      prefetch_bytes: int | float | str = 2e9, progress: bool = True,
                      console: Any = None, method: Any = None, shard: bool | None = None,
                      shard_min_bytes: int = 1 << 24, write_model_card: bool = True,
                      extra_sources: Mapping[str, Any] | None = None,
                      rewrite_jobs: Any = None, card: Any = None) -> dict[str, Any]:
  """Merges HF safetensors checkpoints as a mergekit recipe says, streaming.

  Args:
    recipe: a mergekit YAML path, an ml-collections ``.py`` config, a dict or
      a :class:`~jaxparams.merge.recipe.Recipe`.
    out_dir: the output folder (created atomically).
    key: PRNG key for random methods; ``jax.random.key(seed)`` by default.
    seed: used when ``key`` is ``None``.
    overwrite: replace an existing ``out_dir``.
    max_shard_bytes: output shard size (bytes, or ``'5GB'``-style).
    allow_nonfinite: don't refuse NaN/Inf in inputs or outputs.
    copy_tokenizer: copy tokenizer files next to the output.
    prefetch: how many tensors' inputs the reader thread may read ahead.
    prefetch_bytes: and how many bytes at most (one tensor always may).
    progress: show a rich progress bar (tensors/s, GB/s).
    console: a ``rich.console.Console`` (a new one by default).
    method: a :class:`~jaxparams.merge.MergeMethod` or a merge
      :class:`~jaxparams.transform.Transform` record to use instead of the
      registry's.
    shard: split tensors of at least ``shard_min_bytes`` along axis 0 across
      all devices (``None``: only when there are several GPUs/TPUs).
    shard_min_bytes: smallest tensor (bytes) worth sharding.
    write_model_card: write ``README.md`` (a model card) and the recipe as
      ``mergekit_config.yml``, as mergekit does.
    extra_sources: ``{source name: checkpoint folder}`` read besides the models
      (statistics of data-aware methods, see :mod:`jaxparams.merge.learned.checkpoints`).
    rewrite_jobs: ``f(jobs) -> jobs`` applied to the streaming tasks before they run.
    card: the recipe to show in the model card and ``mergekit_config.yml``
      (default: ``recipe``).

  A recipe naming a data-aware method (``regmean`` or ``fisher``, with ``parameters: {calibration:
  FILE}``) first has its statistics captured by
  :func:`jaxparams.merge.learned.checkpoints.prepare_data_aware`, then streams as above.

  Returns:
    A summary dict: ``tensors``, ``bytes_read``, ``bytes_written``, ``seconds``,
    ``out_dir``, ``layers`` (output layer count).

  Raises:
    FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
    FileNotFoundError: a model folder is missing.
    ValueError: bad recipe, unknown method/parameter, mismatched tensor sets or
      shapes, differing vocabularies without ``tokenizer_source``, NaN/Inf,
      differing non-float tensors, pickle checkpoints.
  """
  t0 = time.perf_counter()
  original = recipe
  recipe = load_recipe(recipe)
  if method is None and _data_aware(recipe.merge_method):
    # Statistics first (merge.learned), then this same streamed merge of a rewritten plan.
    from jaxparams.merge.learned import checkpoints as data_aware  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory(prefix=f"jaxparams-{recipe.merge_method}-") as tmp:
      prepared = data_aware.prepare_data_aware(recipe, tmp, out_dir=out_dir, overwrite=overwrite)
      return merge_checkpoints(
          prepared.recipe, out_dir, key=key, seed=seed, overwrite=overwrite,
          max_shard_bytes=max_shard_bytes, allow_nonfinite=allow_nonfinite,
          copy_tokenizer=copy_tokenizer, prefetch=prefetch, prefetch_bytes=prefetch_bytes,
          progress=progress, console=console, shard=shard, shard_min_bytes=shard_min_bytes,
          write_model_card=write_model_card, extra_sources=prepared.extra_sources,
          rewrite_jobs=prepared.rewrite_jobs, card=original)
  where = recipe.source or "recipe"
  out_dir = Path(out_dir)
  shard_bytes = parse_size(max_shard_bytes, what="max_shard_bytes")
  ahead_bytes = parse_size(prefetch_bytes, what="prefetch_bytes")
  check_output_dir(out_dir, overwrite)  # before any tensor is read
  method = _as_method(method) if method is not None else get_method(recipe.merge_method)
  if key is None:
    key = jax.random.key(seed)
  folders = {ref: recipe.resolve_model(ref) for ref in recipe.model_names()}
  # Every input file stamped before the first read, compared before publishing (a checkpoint
  # rewritten in place meanwhile would give mixed old/new tensors).
  stamps = snapshot_inputs(list(folders.values()) + list((extra_sources or {}).values()))
  with contextlib.ExitStack() as stack:
    readers = {ref: stack.enter_context(open_checkpoint(p)) for ref, p in folders.items()}
    tasks = plan_merge(recipe, readers, method)
    align = None
    if recipe.tokenizer_source is not None:
      from jaxparams.merge.vocab import build_alignment  # pylint: disable=import-outside-toplevel
      align = build_alignment(recipe.tokenizer_source, folders, recipe.base_model,
                              recipe.pad_to_multiple_of)
    config = read_source_config(recipe, folders)  # a bad config.json is refused before merging
    jobs = stream_tasks(tasks, method, readers, recipe)
    for name, path in (extra_sources or {}).items():
      readers[name] = stack.enter_context(open_checkpoint(path))
    if rewrite_jobs is not None:
      jobs = rewrite_jobs(jobs)
    n_layers = count_layers([t.name for t in tasks])
    _log.info("%s: %s merge of %d tensors from %d models (%s) into %s", where,
              recipe.merge_method, len(jobs), len(folders),
              ", ".join(str(p) for p in folders.values()), out_dir)

    def prepare(job: StreamTask, arrays: dict) -> dict:
      # In the reader thread: embedding / LM-head rows aligned to the output vocabulary.
      if align is None or not job.meta.vocab:
        return arrays
      by_model = align.align({m: arrays[(m, n)] for m, n in job.inputs}, recipe.base_model)
      return {(m, n): by_model[m] for m, n in job.inputs}

    def finalize(writer) -> None:
      check_unchanged(stamps, context=where)
      write_side_files(writer, recipe, folders, align, n_layers, copy_tokenizer, config)
      if write_model_card:
        shown = recipe if card is None else load_recipe(card)
        text = recipe_yaml(shown, original if card is None else card)
        (writer.folder_tmp / "mergekit_config.yml").write_text(text, encoding="utf-8")
        (writer.folder_tmp / "README.md").write_text(model_card(shown, text, out_dir.name),
                                                    encoding="utf-8")

    with progress_bar(console, progress, recipe.merge_method, len(jobs)) as update:
      try:
        summary = stream_checkpoints(
            jobs, readers, out_dir, key=key, overwrite=overwrite,
            max_shard_bytes=shard_bytes, prefetch=prefetch,
            prefetch_bytes=ahead_bytes, prepare=prepare,
            skip=("finite",) if allow_nonfinite else (),
            shard=make_sharding(shard, shard_min_bytes), progress=update, finalize=finalize,
            context=where)
      except NonFiniteError as e:
        raise NonFiniteError(f"{e}; fix the checkpoint or pass allow_nonfinite=True "
                             "(--allow-nonfinite).") from None
  summary.update(seconds=time.perf_counter() - t0, layers=n_layers)
  _log.info("%s: wrote %d tensors (%d bytes) in %.1f s", out_dir, summary["tensors"],
            summary["bytes_written"], summary["seconds"])
  return summary
