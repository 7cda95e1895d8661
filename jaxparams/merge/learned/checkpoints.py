"""Data-aware merges of HF checkpoints from a recipe: statistics per model, then a streamed merge.

A mergekit-style recipe may name ``merge_method: regmean`` with a calibration text file::

  merge_method: regmean
  models:
    - model: ./math
    - model: ./code
  parameters:
    calibration: calib.txt     # one text per line (required)
    alpha: 0.95                # RegMean's off-diagonal scaling (record default)
    max_length: 128            # calibration tokens per text
    batch_size: 8              # texts per calibration batch
  dtype: float32

``jaxparams merge recipe.yml OUT`` (:func:`jaxparams.merge.stream.merge_checkpoints`) then
(1) (:func:`prepare_data_aware`) loads each model in turn (one in memory at a time), tokenises the texts with the model's
own ``tokenizer.json`` and captures the Gram matrix ``X^T X`` of every Linear layer's inputs
with :func:`jaxparams.calib.collect_stats`, written to a temporary safetensors folder under the
tensor's name; (2) streams the merge with the transform layer's streaming driver: every
Linear weight runs the :data:`~jaxparams.merge.learned.records.REGMEAN` record with the Grams
as extra input tensors, every other tensor the ``linear`` record (an average) -- the same
records the tree function :func:`jaxparams.merge.learned.regmean` runs. The base model, if
any, is not used (RegMean merges the fine-tuned models only).

``merge_method: fisher`` (causal LMs) works the same way with each model's diagonal empirical
Fisher of the next-token log-likelihood on the texts (:func:`capture_fishers`), the
:data:`~jaxparams.merge.learned.records.FISHER` record on every tensor with a Fisher (all
parameters), parameter ``min_fisher``.

Example:
  >>> sorted(data_aware_parameters('regmean'))
  ['alpha', 'batch_size', 'calibration', 'eps', 'max_length', 'max_texts']
  >>> sorted(data_aware_parameters('fisher'))
  ['batch_size', 'calibration', 'max_length', 'max_texts', 'min_fisher']
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from jaxparams.merge.learned.records import FISHER, RECORDS, FisherConfig, RegMeanConfig
from jaxparams.merge.recipe import ModelInput, Recipe, load_recipe
from jaxparams.transform import StreamTask

__all__ = ["DATA_AWARE_METHODS", "DATA_PARAMETERS", "DataAwareMerge", "capture_fishers",
           "capture_grams", "data_aware_parameters", "prepare_data_aware", "read_calibration"]

_log = logging.getLogger(__name__)

#: Merge methods a recipe may name that need calibration data (merged by this module).
DATA_AWARE_METHODS = ("fisher", "regmean")

#: Data parameters of a data-aware recipe and their defaults (``None``: required).
DATA_PARAMETERS: Mapping[str, Any] = {"calibration": None, "max_length": 128, "batch_size": 8,
                                      "max_texts": 256}

# Record fields set by the driver, not by the recipe.
_DRIVER_FIELDS = ("input_axis", "weight")


def data_aware_parameters(method: str) -> dict[str, Any]:
  """Recipe parameter names of ``method`` -> defaults (record fields + data parameters).

  Raises:
    ValueError: ``method`` is not data-aware (listing the ones that are).
  """
  if method not in DATA_AWARE_METHODS:
    raise ValueError(f"unknown data-aware merge method {method!r}; valid: "
                     f"{list(DATA_AWARE_METHODS)}")
  rec = RECORDS.get(method)
  out = {k: v for k, v in rec.defaults().items() if k not in _DRIVER_FIELDS}
  out.update(DATA_PARAMETERS)
  return out


def read_calibration(path: str | Path, recipe: Recipe | None = None, *,
                     max_texts: int | None = None) -> list[str]:
  """The non-empty lines of a calibration text file.

  A recipe read from a file names its calibration text relative to the recipe's folder, and the
  file must stay inside that folder (absolute paths, ``..`` and symlinks leading outside are
  refused, :func:`jaxparams.io.resolve_inside`): a recipe from elsewhere cannot make the merge
  read ``/etc/shadow``. A recipe built in code (no source file) names it as the caller chose
  (relative to the current directory). The text is read by
  :func:`jaxparams.io.read_calibration_text` (size-bounded, UTF-8, no binary).

  Raises:
    FileNotFoundError: the file is missing (naming it and where it was looked for).
    ValueError: the path leads outside the recipe's folder; the text fails the reader's checks.
  """
  from jaxparams.io import read_calibration_text, resolve_inside  # pylint: disable=import-outside-toplevel
  where = (recipe.source if recipe is not None else None) or "recipe"
  if recipe is not None and recipe.source:
    folder = Path(recipe.source).parent
    p = resolve_inside(folder, str(path), where=str(recipe.source), what="calibration file")
  else:
    p = Path(path).expanduser()
  if not p.is_file():
    raise FileNotFoundError(f"{where}: calibration file {str(path)!r} not found (looked for "
                            f"{p}); it must be a text file with one calibration "
                            "text per line")
  return read_calibration_text(p, what="calibration file", max_lines=max_texts or None)


def capture_grams(folder: str | Path, texts: list[str], *, max_length: int = 128,
                  batch_size: int = 8) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """Grams ``X^T X`` of every Linear layer of the HF checkpoint ``folder`` on ``texts``.

  Returns:
    ``({tensor name in the files: Gram [in, in] float32}, {tensor name: input axis})``.

  Raises:
    ValueError: no ``tokenizer.json`` in ``folder``, or an unsupported checkpoint.
  """
  from jaxparams.calib import collect_stats, text_batches  # pylint: disable=import-outside-toplevel
  from jaxparams.models.hf import hf_name_map  # pylint: disable=import-outside-toplevel
  module, params, config, tokenizer = _load_with_tokenizer(folder)
  model_type = getattr(config, "model_type", None) or ""
  batches = text_batches(tokenizer, texts, batch_size=batch_size,
                         max_length=max_length, token_type_ids="bert" in model_type.lower()
                         or "Bert" in type(module).__name__)
  stats = collect_stats(module, params, batches)
  nmap = hf_name_map(config)
  by_norm = _stored_names(folder)
  grams, axes = {}, {}
  for path, s in stats.items():
    if path not in nmap:
      continue
    hf, transpose = nmap[path]
    name = by_norm.get(hf)
    if name is None:
      continue
    grams[name] = np.asarray(s.xtx, np.float32)
    axes[name] = 1 if transpose else 0
  return grams, axes


def capture_fishers(folder: str | Path, texts: list[str], *, max_length: int = 128,
                    batch_size: int = 8) -> dict[str, np.ndarray]:
  """Diagonal empirical Fisher of a causal LM checkpoint on ``texts``, normalised.

  ``F = mean_n (d log p(text_n) / d theta)^2`` with ``log p(text_n)`` the summed next-token
  log-likelihood of text ``n`` (per-example gradients by ``jax.vmap(jax.grad)``), divided by
  its global L2 norm (FusionBench's ``normalize_fisher_weight``).

  Returns:
    ``{tensor name in the files: Fisher in the file's layout (float32)}``.

  Raises:
    ValueError: no ``tokenizer.json``; the model does not output logits over its vocabulary.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jaxparams import tree as jtree  # pylint: disable=import-outside-toplevel
  from jaxparams.calib import text_batches  # pylint: disable=import-outside-toplevel
  from jaxparams.calib.fisher import causal_lm_fisher  # pylint: disable=import-outside-toplevel
  from jaxparams.models.hf import hf_name_map  # pylint: disable=import-outside-toplevel
  module, params, config, tokenizer = _load_with_tokenizer(folder)
  batches = text_batches(tokenizer, texts, batch_size=batch_size,
                         max_length=max_length)
  vocab = getattr(config, "vocab_size", None)
  probe = jax.eval_shape(lambda p, i: module.apply({"params": p}, i), params,
                         jnp.zeros((1, 2), jnp.int32))
  if not hasattr(probe, "shape") or probe.shape[-1] != vocab:
    raise ValueError(f"{folder}: 'fisher' needs a causal language model (logits over the "
                     f"vocabulary); {type(module).__name__} outputs {getattr(probe, 'shape', '?')}")

  fisher = causal_lm_fisher(module, params, batches, batch_size=batch_size)
  norm = jnp.sqrt(sum(jnp.sum(f * f) for f in jax.tree.leaves(fisher)))
  flat = {k: np.asarray(v / jnp.maximum(norm, 1e-30), np.float32)
          for k, v in jtree.flatten(fisher).items()}
  nmap = hf_name_map(config)
  by_norm = _stored_names(folder)
  out = {}
  for path, f in flat.items():
    if path in nmap and by_norm.get(nmap[path][0]) is not None:
      hf, transpose = nmap[path]
      out[by_norm[hf]] = np.ascontiguousarray(f.T if transpose else f)
  return out


def _check_params(recipe: Recipe, where: str) -> dict[str, Any]:
  valid = data_aware_parameters(recipe.merge_method)
  if recipe.slices:
    raise ValueError(f"{where}: merge method {recipe.merge_method!r} takes 'models:', not "
                     "'slices:'")
  for m in recipe.models or ():
    if m.parameters:
      raise ValueError(f"{where}: model {m.model!r}: merge method {recipe.merge_method!r} takes "
                       f"no per-model parameters, got {sorted(m.parameters)}; valid global "
                       f"parameters: {sorted(valid)}")
  unknown = sorted(set(recipe.parameters) - set(valid))
  if unknown:
    raise ValueError(f"{where}: unknown parameter(s) {unknown} for merge method "
                     f"{recipe.merge_method!r}; valid parameters: {sorted(valid)}")
  params = {**valid, **dict(recipe.parameters)}
  if params["calibration"] is None:
    raise ValueError(f"{where}: merge method {recipe.merge_method!r} needs calibration text: "
                     "set 'parameters: {calibration: FILE.txt}' (one text per line)")
  for k in ("max_length", "batch_size", "max_texts"):
    v = params[k]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{where}: parameter {k} must be a positive integer, got {v!r}")
  if len(recipe.models or ()) < 2:
    raise ValueError(f"{where}: merge method {recipe.merge_method!r} needs at least 2 models, "
                     f"got {len(recipe.models or ())}")
  return params


@dataclasses.dataclass(frozen=True)
class DataAwareMerge:
  """What the streaming merge runs for a data-aware recipe (:func:`prepare_data_aware`).

  Attributes:
    recipe: a ``linear`` recipe over the same models (every tensor without statistics is
      averaged).
    extra_sources: ``{source name: folder of captured statistics}`` read besides the models.
    rewrite_jobs: ``f(jobs) -> jobs``: every tensor with statistics runs the method's record
      with the statistics as extra inputs.
  """
  recipe: Recipe
  extra_sources: Mapping[str, Path]
  rewrite_jobs: Callable[[list[StreamTask]], list[StreamTask]]


def prepare_data_aware(recipe: Any, stats_dir: str | Path, *, out_dir: str | Path,
                       overwrite: bool = False) -> DataAwareMerge:
  """Checks a data-aware recipe, captures each model's statistics into ``stats_dir``.

  The streamed merge itself is :func:`jaxparams.merge.merge_checkpoints`'s (which calls this for
  a recipe naming a method of :data:`DATA_AWARE_METHODS`); this module never drives it.

  Args:
    recipe: a recipe naming a method of :data:`DATA_AWARE_METHODS` (path, dict or Recipe).
    stats_dir: an existing folder for the statistics (a temporary folder of the caller).
    out_dir: the merge's output folder, checked (``overwrite``) before any model is read.
    overwrite: whether ``out_dir`` may exist.

  Raises:
    ValueError: unknown parameters (listing the valid ones), no calibration parameter,
      models without ``tokenizer.json``.
    FileNotFoundError: the calibration file or a model is missing.
    FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
  """
  from jaxparams.io import check_output_dir, save_safetensors  # pylint: disable=import-outside-toplevel
  recipe = load_recipe(recipe)
  where = recipe.source or "recipe"
  params = _check_params(recipe, where)
  record = RECORDS.get(recipe.merge_method)
  rec_cfg = {k: params[k] for k in record.defaults() if k in params}
  cfg0 = record.make_config(**rec_cfg)  # names, types and ranges before any model is read
  one = np.zeros((1, 1), np.float32)
  record.run_static_checks(record.context((None, (one, one)), cfg0, "", ("model", "stats")))
  is_fisher = record is FISHER
  check_output_dir(Path(out_dir), overwrite)
  texts = read_calibration(params["calibration"], recipe, max_texts=params["max_texts"])
  refs = [m.model for m in recipe.models]
  folders = {ref: recipe.resolve_model(ref) for ref in refs}
  kind = "fisher" if is_fisher else "gram"
  extra, axes = {}, {}
  grams_of: dict[str, set] = {}
  for i, ref in enumerate(refs):
    _log.info("%s: capturing %s statistics of %s on %d calibration texts", where, kind, ref,
              len(texts))
    if is_fisher:
      grams, ax = capture_fishers(folders[ref], texts, max_length=params["max_length"],
                                  batch_size=params["batch_size"]), {}
    else:
      grams, ax = capture_grams(folders[ref], texts, max_length=params["max_length"],
                                batch_size=params["batch_size"])
    if not grams:
      raise ValueError(f"{folders[ref]}: no {kind} statistics from the calibration text; "
                       f"{recipe.merge_method!r} has nothing to weigh the merge with")
    path = Path(stats_dir) / f"stats_{i}"
    save_safetensors(grams, path)
    extra[f"{kind}:{ref}"] = path
    axes.update(ax)
    grams_of[ref] = set(grams)
  linear = dataclasses.replace(recipe, merge_method="linear", base_model=None, parameters={},
                               models=tuple(ModelInput(r, {"weight": 1.0}) for r in refs))

  def rewrite(jobs: list[StreamTask]) -> list[StreamTask]:
    out = []
    for job in jobs:
      names = [n for _, n in job.inputs]
      if job.record is None or not all(n in grams_of[r] for r, n in job.inputs):
        out.append(job)
        continue
      cfg = (FisherConfig(**rec_cfg) if is_fisher
             else RegMeanConfig(**rec_cfg, input_axis=axes[names[0]]))
      what = "Fisher" if is_fisher else "Gram"
      out.append(dataclasses.replace(
          job, record=record, config=cfg, has_base=False,
          inputs=tuple(job.inputs) + tuple((f"{kind}:{r}", n) for r, n in job.inputs),
          labels=tuple(job.labels or ()) + tuple(f"{what} of {r!r}" for r, _ in job.inputs),
          compute_dtype=None, out_dtype=job.out_dtype or job.compute_dtype))
    return out

  return DataAwareMerge(recipe=linear, extra_sources=extra, rewrite_jobs=rewrite)


def __getattr__(name: str):
  if name == "merge_data_aware":  # the streamed merge is merge_checkpoints' (no cycle back)
    raise AttributeError("jaxparams.merge.learned.checkpoints.merge_data_aware was removed: "
                         "jaxparams.merge.merge_checkpoints(recipe, out_dir) merges data-aware "
                         "recipes (it calls prepare_data_aware for the statistics)")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_with_tokenizer(folder: str | Path) -> tuple[Any, Any, Any, Any]:
  """An HF model folder as ``(module, fp32 params, config, tokenizer)`` for calibration text."""
  from jaxparams.models.hf import from_hf  # pylint: disable=import-outside-toplevel
  from jaxparams.models.hf_open import hf_tokenizer  # pylint: disable=import-outside-toplevel
  folder = Path(folder)
  tok = hf_tokenizer(folder, purpose="the calibration text cannot be tokenized for this model")
  module, params, config = from_hf(folder, dtype=np.float32, strict=False)
  return module, params, config, tok


def _stored_names(folder: str | Path) -> dict[str, str]:
  """Normalised HF tensor name -> name in the files, through the one HF opener."""
  from jaxparams.models.hf_open import open_hf  # pylint: disable=import-outside-toplevel
  with open_hf(folder, purpose="a data-aware merge") as ck:
    return dict(ck.by_norm)
