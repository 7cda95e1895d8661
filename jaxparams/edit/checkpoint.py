"""Editing an HF checkpoint on disk: the library behind ``jaxparams edit``.

``edit_checkpoint`` loads a Llama or a BERT masked-LM (HF ``BertForMaskedLM``) checkpoint (with
its ``tokenizer.json``), reads EasyEdit-style
requests, gets the key statistics (saved ones, or streamed from a text file and saved), runs
ROME/MEMIT/AlphaEdit, writes the edited HF checkpoint atomically (:func:`jaxparams.io.atomic_dir`) and the delta in
``OUT_DIR/delta``. Methods and their parameters come from :mod:`jaxparams.edit.registry`
(defaults in the parameter dataclasses; every field settable with ``params=``, a JSON/YAML
``params_file`` or ``name=value`` assignments). ``apply_delta_checkpoint`` re-applies or rolls back a delta.

Example (needs a checkpoint; the CLI tests run it):
  >>> edit_checkpoint('lm', 'req.jsonl', 'out', method='rome', layers='1')  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import pathlib
import time
from typing import Any, Sequence

import jax

from jaxparams import io as jio
from jaxparams.io import limits
from jaxparams.edit import delta as delta_lib
from jaxparams.edit import fingerprint as fp_lib
from jaxparams.edit import methods, probe, registry, sites, stats
from jaxparams.edit import requests as req_lib

__all__ = ["edit_checkpoint", "apply_delta_checkpoint", "METHODS", "parse_layers", "edit_params"]

METHODS = tuple(registry.checkpoint_names())
"""Names of the methods :func:`edit_checkpoint` runs (read from :mod:`jaxparams.edit.registry`)."""
#: Largest requests file read (bytes): a MEMIT batch of 10,000 requests is about 2 MB.
MAX_REQUESTS_BYTES = 16 * 2**20
#: Tokens a context template adds before a prompt (ROME's longest: 10, plus BOS and a space).
CONTEXT_TOKENS = 12


def _checkpoint_method(method: str) -> registry.EditMethod:
  if method not in registry.METHODS:
    close = difflib.get_close_matches(str(method), METHODS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown edit method {method!r}{hint}; valid: {', '.join(METHODS)}")
  rec = registry.get(method)
  if rec.run is None:
    why = ("edits through an adaptor run by dot= and cannot be written as an HF checkpoint"
           if rec.form == "adaptor" else "is not run on checkpoints")
    raise ValueError(f"edit method {method!r} {why}; use jaxparams.edit in a program. "
                     f"valid: {', '.join(METHODS)}")
  return rec


def edit_params(method: str, params: Any = None, *, params_file: str | pathlib.Path | None = None,
                assignments: Sequence[str] = (), fact_token: str | None = None) -> Any:
  """The parameters of ``method``: its defaults, then ``params_file``, then ``assignments``.

  Args:
    method: a registered method name.
    params: a parameters instance of the method, or a mapping of fields (applied first).
    params_file: a JSON/YAML file of ``{name: value}`` (dotted or nested names).
    assignments: ``['name=value', ...]`` (the CLI's ``--set``).
    fact_token: shorthand for ``target.fact_token`` (methods with a target optimisation).

  Raises:
    ValueError: unknown method or parameter, or a value of the wrong type (naming the file
      and the parameter).
  """
  rec = registry.get(method)
  if params is None or isinstance(params, rec.params):
    hp = params if params is not None else rec.defaults()
  else:
    hp = rec.make_params(params, where="params")
  if params_file is not None:
    hp = rec.make_params(registry.read_params(params_file), base=hp, where=str(params_file))
  if assignments:
    hp = rec.make_params(registry.parse_assignments(assignments), base=hp, where="--set")
  if fact_token is not None:
    hp = rec.make_params({"target.fact_token": fact_token}, base=hp, where="--fact-token")
  return hp


def parse_layers(layers: str, n_layers: int | None = None) -> list[int]:
  """``'3'``, ``'3,4,5'`` or ``'3-5'`` -> layer indices (checked against ``n_layers``).

  Example:
    >>> parse_layers('0-2,5')
    [0, 1, 2, 5]
    >>> parse_layers('a-b')
    Traceback (most recent call last):
    ...
    ValueError: --layers 'a-b': 'a-b' is not a layer index or a range (give 3, 3,4,5 or 3-5)
  """
  out: list[int] = []
  for part in str(layers).split(","):
    part = part.strip()
    if not part:
      continue
    bad = ValueError(f"--layers {layers!r}: {part!r} is not a layer index or a range (give 3, "
                     "3,4,5 or 3-5)")
    a, sep, b = part.partition("-")
    if not a.strip().isdigit() or (sep and not b.strip().isdigit()):
      raise bad
    lo, hi = int(a), int(b) if sep else int(a)
    if hi < lo:
      raise ValueError(f"--layers {layers!r}: the range {part!r} is empty (give low-high)")
    if n_layers is not None and hi >= n_layers:
      raise ValueError(f"--layers {layers!r}: layer {hi} does not exist (the model has "
                       f"{n_layers} layers: 0-{n_layers - 1})")
    if hi - lo > 100_000:
      raise bad
    out.extend(range(lo, hi + 1))
  if not out:
    raise ValueError(f"--layers {layers!r}: no layers")
  return sorted(set(out))


def _load(model_dir: pathlib.Path):
  from jaxparams.models import hf  # pylint: disable=g-import-not-at-top
  from jaxparams.models.hf_open import hf_tokenizer  # pylint: disable=g-import-not-at-top
  if not model_dir.is_dir():
    raise FileNotFoundError(f"{model_dir}: no such folder")
  tok = hf_tokenizer(model_dir, purpose="the model folder needs a tokenizer.json to edit")
  module, params, config = hf.from_hf(model_dir)
  if type(module).__name__ == "Bert" and not getattr(config, "mlm_head", False):
    raise ValueError(f"{model_dir}: a BERT without a masked-LM head (cls.predictions) cannot be "
                     "edited; save it as BertForMaskedLM")
  if type(module).__name__ not in ("Llama", "Bert"):
    raise ValueError(f"{model_dir}: editing supports Llama and BERT masked-LM checkpoints; "
                     f"found {type(module).__name__}")
  return module, params, config, tok


def edit_checkpoint(model_dir: str | pathlib.Path, requests_file: str | pathlib.Path,
                    out_dir: str | pathlib.Path, *, method: str, layers: str,
                    stats_dir: str | pathlib.Path | None = None,
                    stats_text: str | pathlib.Path | None = None, overwrite: bool = False,
                    fact_token: str | None = None, params: Any = None,
                    params_file: str | pathlib.Path | None = None,
                    assignments: Sequence[str] = ()) -> dict[str, Any]:
  """Edits the checkpoint; returns a summary dict (method, layers, n_requests, seconds, params).

  Args:
    model_dir: HF Llama or BertForMaskedLM folder with ``tokenizer.json``.
    requests_file: EasyEdit-style requests (JSONL or a JSON list).
    out_dir: output folder (published atomically; the delta in ``out_dir/delta``).
    method: one of :data:`METHODS` (:func:`jaxparams.edit.registry.checkpoint_names`).
    layers: ``'3'``, ``'3,4,5'`` or ``'3-5'``.
    stats_dir: saved key statistics (read, or written when ``stats_text`` is given).
    stats_text: text file (one sample a line) to compute the key statistics from.
    overwrite: replace ``out_dir``.
    fact_token: ``target.fact_token`` (``'subject_last'`` by default).
    params, params_file, assignments: the method's parameters (see :func:`edit_params`).

  Raises:
    ValueError: unknown method or parameter, bad request (file:line), no statistics source,
      layers that do not exist.
  """
  rec = _checkpoint_method(method)
  hp = edit_params(method, params, params_file=params_file, assignments=assignments,
                   fact_token=fact_token)
  model_dir, out_dir = pathlib.Path(model_dir), pathlib.Path(out_dir)
  jio.check_output_dir(out_dir, overwrite)
  parse_layers(layers)
  if stats_text is None and stats_dir is None:
    raise ValueError("edit needs key statistics: --stats DIR (saved) or --stats-text FILE")
  module, params, config, tok = _load(model_dir)
  limits.check_file_size(requests_file, MAX_REQUESTS_BYTES, what="requests file")
  reqs = req_lib.read_requests(requests_file, tok)
  for r in reqs:  # the longest sequence an edit runs: context + prompt + target (issue 25)
    n = (len(req_lib.encode_text(tok, r.prompt.replace("{}", r.subject)))
         + len(req_lib.encode_text(tok, r.target_new)) + CONTEXT_TOKENS)
    limits.check_token_count(n, limits.max_positions(config),
                             what=f"{r.where or requests_file}: prompt + target (+ context)")
  if not rec.batch and len(reqs) != 1:
    raise ValueError(f"{requests_file}: {method.upper()} edits one request at a time, found "
                     f"{len(reqs)} (use --method "
                     f"{' or '.join(n for n in METHODS if registry.get(n).batch)} for batches)")
  lays = parse_layers(layers, getattr(config, "num_hidden_layers", None))
  where = [probe.kernel_path(l, module) for l in lays]
  methods.edited_layers(params, lambda p, _: p in where)
  st = _key_stats(module, params, tok, model_dir, lays, stats_dir, stats_text)
  cov = {l: s.gram for l, s in st.items()}
  tpl = req_lib.context_templates(module, params, tok)
  sel = lambda p, _: p in where
  t0 = time.perf_counter()
  new, d = rec.run(module, params, tok, reqs, cov=cov, where=sel, templates=tpl, hp=hp)
  seconds = time.perf_counter() - t0
  _same_as_source(new, params, out_dir)
  d.meta.update(params=dataclasses.asdict(hp), model_dir=str(model_dir))
  _write(new, config, out_dir, model_dir, d, overwrite)
  return {"method": method, "layers": lays, "n_requests": len(reqs), "seconds": seconds,
          "out": str(out_dir), "params": hp}


def _key_stats(module, params, tok, model_dir, lays, stats_dir, stats_text):
  """The key statistics of ``lays``: from ``stats_dir`` when saved there for these tensors
  (content fingerprints, :mod:`jaxparams.edit.fingerprint`; with ``stats_text``, also for that
  text), else computed from ``stats_text`` and saved to ``stats_dir``."""
  if stats_text is None and stats_dir is None:
    raise ValueError("edit needs key statistics: --stats DIR (saved) or --stats-text FILE")
  tok_bytes = (model_dir / "tokenizer.json").read_bytes()
  fps = {l: fp_lib.stats_fingerprint(params, l, tok_bytes) for l in lays}
  if stats_text is None:
    return stats.load_stats(stats_dir, fps, lays)
  raw = jio.read_text(stats_text, what="--stats-text file")
  sha = hashlib.sha256(raw.encode()).hexdigest()
  if stats_dir is not None:
    st = stats.load_stats(stats_dir, fps, lays, text_sha256=sha)
    if st is not None:
      return st
  texts = jio.read_calibration_text(stats_text, what="--stats-text file", strip=False,
                                    keep_empty=True)
  batches = (stats.text_batches_mlm(tok, texts) if sites.of(module).masked
             else stats.text_batches(tok, texts))
  st = stats.key_stats(module, params, batches, layers=lays)
  if stats_dir is not None:
    stats.save_stats(st, stats_dir, fps, {"model_dir": str(model_dir), "text_sha256": sha,
                                          "text": str(stats_text)})
  return st


def _same_as_source(new, old, out_dir) -> None:
  """Every edited parameter keeps the source's shape and dtype (issue 25: outputs checked
  before publishing; finiteness is checked as they are written)."""
  from jaxparams import tree as jtree  # pylint: disable=g-import-not-at-top
  before = jtree.flatten(old)
  for p, v in jtree.flatten(new).items():
    if p in before:
      jio.check_output_tensor(p, v, where=str(out_dir), shape=before[p].shape,
                              dtype=before[p].dtype, finite=False)


def _write(params, config, out_dir, copy_from, d, overwrite):
  """The HF checkpoint (+ ``delta/``) into a temporary sibling, published by one rename
  (:func:`jaxparams.io.atomic_dir`): a killed run leaves ``out_dir`` as it was."""
  from jaxparams.models import hf  # pylint: disable=g-import-not-at-top
  with jio.atomic_dir(out_dir, overwrite=overwrite) as tmp:
    hf.to_hf(jax.device_get(params), config, tmp, copy_from=copy_from, overwrite=True,
             check_outputs=True)
    if d is not None:
      delta_lib.save_delta(d, tmp / "delta")


def apply_delta_checkpoint(model_dir: str | pathlib.Path, delta_dir: str | pathlib.Path,
                           out_dir: str | pathlib.Path, *, rollback: bool,
                           overwrite: bool = False) -> dict[str, Any]:
  """Rolls back (``rollback=True``: originals restored bit-exactly) or re-applies a delta.

  The checkpoint's tensors are checked against the fingerprints the delta recorded before
  anything is written (:func:`jaxparams.edit.delta.check_target`): a delta of another model, a
  second apply or a rollback of an unedited model is a one-line ValueError naming the folder
  and the tensor, and ``out_dir`` is not created.
  """
  from jaxparams.models import hf  # pylint: disable=g-import-not-at-top
  model_dir, out_dir = pathlib.Path(model_dir), pathlib.Path(out_dir)
  jio.check_output_dir(out_dir, overwrite)
  _, params, config, _ = _load(model_dir)
  d = delta_lib.load_delta(delta_dir)
  names = {p: n for p, (n, _) in hf.hf_name_map(config).items()}
  try:
    delta_lib.check_target(params, d, rollback=rollback)
  except ValueError as e:
    msg = str(e)
    for p in d.updates:
      msg = msg.replace(repr(p), f"{names.get(p, p)!r}")
    raise ValueError(f"{model_dir}: {msg} (delta {delta_dir}); nothing written") from None
  new = (delta_lib.rollback(params, d, check=False) if rollback
         else delta_lib.apply_delta(params, d, check=False))
  _write(new, config, out_dir, model_dir, None, overwrite)
  return {"rollback": rollback, "tensors": list(d.updates), "out": str(out_dir)}
