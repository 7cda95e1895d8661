"""Editing an HF checkpoint on disk: the library behind ``jaxparams edit``.

``edit_checkpoint`` loads a Llama or a BERT masked-LM (HF ``BertForMaskedLM``) checkpoint (with
its ``tokenizer.json``), reads EasyEdit-style
requests, gets the key statistics (saved ones, or streamed from a text file and saved), runs
ROME/MEMIT/AlphaEdit, writes the edited HF checkpoint atomically and the delta in
``OUT_DIR/delta``. ``apply_delta_checkpoint`` re-applies or rolls back a delta.

Example (needs a checkpoint; the CLI tests run it):
  >>> edit_checkpoint('lm', 'req.jsonl', 'out', method='rome', layers='1')  # doctest: +SKIP
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax

from jaxparams import io as jio
from jaxparams.edit import arch as arch_lib
from jaxparams.edit import delta as delta_lib
from jaxparams.edit import methods, probe, stats
from jaxparams.edit import requests as req_lib

__all__ = ["edit_checkpoint", "apply_delta_checkpoint", "METHODS", "parse_layers"]

METHODS = ("rome", "memit", "alphaedit")


def parse_layers(layers: str) -> list[int]:
  """``'3'``, ``'3,4,5'`` or ``'3-5'`` -> layer indices."""
  out: list[int] = []
  for part in str(layers).split(","):
    part = part.strip()
    if "-" in part:
      a, b = part.split("-")
      out.extend(range(int(a), int(b) + 1))
    elif part:
      out.append(int(part))
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
                    fact_token: str = "subject_last") -> dict[str, Any]:
  """Edits the checkpoint; returns a summary dict (method, layers, n_requests, seconds).

  Raises:
    ValueError: unknown method, bad request (file:line), no statistics source, layers that do
      not exist.
  """
  if method not in METHODS:
    raise ValueError(f"unknown edit method {method!r}; valid: {', '.join(METHODS)}")
  model_dir, out_dir = pathlib.Path(model_dir), pathlib.Path(out_dir)
  jio.check_output_dir(out_dir, overwrite)
  module, params, config, tok = _load(model_dir)
  reqs = req_lib.read_requests(requests_file, tok)
  if method == "rome" and len(reqs) != 1:
    raise ValueError(f"{requests_file}: ROME edits one request at a time, found {len(reqs)} "
                     "(use --method memit or alphaedit for batches)")
  lays = parse_layers(layers)
  where = [probe.kernel_path(l, module) for l in lays]
  methods.edited_layers(params, lambda p, _: p in where)
  name = model_dir.resolve().name
  if stats_text is not None:
    texts = jio.read_calibration_text(stats_text, what="--stats-text file", strip=False,
                                      keep_empty=True)
    batches = (arch_lib.text_batches_mlm(tok, texts) if arch_lib.of(module).masked
               else stats.text_batches(tok, texts))
    st = stats.key_stats(module, params, batches, layers=lays)
    if stats_dir is not None:
      stats.save_stats(st, stats_dir, name)
  elif stats_dir is not None:
    st = stats.load_stats(stats_dir, name, lays)
  else:
    raise ValueError("edit needs key statistics: --stats DIR (saved) or --stats-text FILE")
  cov = {l: s.gram for l, s in st.items()}
  tpl = req_lib.context_templates(module, params, tok)
  sel = lambda p, _: p in where
  t0 = time.perf_counter()
  if method == "rome":
    hp = methods.RomeParams(target=methods.tgt_lib.TargetParams(fact_token=fact_token))
    new, d = methods.rome(module, params, tok, reqs[0], cov=cov, where=sel, templates=tpl, hp=hp)
  elif method == "memit":
    hp = methods.MemitParams(target=methods.tgt_lib.TargetParams(
        fact_token=fact_token, clamp_norm_factor=0.75, v_num_grad_steps=25))
    new, d = methods.memit(module, params, tok, reqs, cov=cov, where=sel,
                           templates=[["{}"], tpl[1:6]], hp=hp)
  else:
    hp = methods.AlphaEditParams(target=methods.tgt_lib.TargetParams(
        fact_token=fact_token, clamp_norm_factor=0.75, v_num_grad_steps=25, v_lr=0.1))
    new, d, _ = methods.alphaedit(module, params, tok, reqs, state=methods.alpha_state(cov, hp),
                                  where=sel, templates=[["{}"], tpl[1:6]], hp=hp)
  seconds = time.perf_counter() - t0
  _write(new, config, out_dir, model_dir, d, overwrite)
  return {"method": method, "layers": lays, "n_requests": len(reqs), "seconds": seconds,
          "out": str(out_dir)}


def _write(params, config, out_dir, copy_from, d, overwrite):
  from jaxparams.models import hf  # pylint: disable=g-import-not-at-top
  tmp = out_dir.with_name(out_dir.name + ".edit-tmp")
  if tmp.exists():
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(tmp)
  try:
    hf.to_hf(jax.device_get(params), config, tmp, copy_from=copy_from)
    if d is not None:
      delta_lib.save_delta(d, tmp / "delta")
    if out_dir.exists() and overwrite:
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.rmtree(out_dir)
    tmp.rename(out_dir)
  finally:
    if tmp.exists():
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.rmtree(tmp)


def apply_delta_checkpoint(model_dir: str | pathlib.Path, delta_dir: str | pathlib.Path,
                           out_dir: str | pathlib.Path, *, rollback: bool,
                           overwrite: bool = False) -> dict[str, Any]:
  """Rolls back (``rollback=True``: originals restored bit-exactly) or re-applies a delta."""
  model_dir, out_dir = pathlib.Path(model_dir), pathlib.Path(out_dir)
  jio.check_output_dir(out_dir, overwrite)
  _, params, config, _ = _load(model_dir)
  d = delta_lib.load_delta(delta_dir)
  new = delta_lib.rollback(params, d) if rollback else delta_lib.apply_delta(params, d)
  _write(new, config, out_dir, model_dir, None, overwrite)
  return {"rollback": rollback, "tensors": list(d.updates), "out": str(out_dir)}
