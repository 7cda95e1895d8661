"""``jaxparams quantize SRC_DIR OUT_DIR``: quantize an HF checkpoint (BERT, Llama).

Loads the checkpoint with :func:`jaxparams.models.from_hf`, quantizes every Linear
kernel (embeddings, norms, biases and the LM head stay full precision unless a
rules file says otherwise) with ``--method`` at ``--bits`` / ``--group-size``,
calibrating GPTQ/AWQ/decoupleQ layer by layer on ``--calibration`` text (one
sample per non-empty line), and writes

* ``--format jaxparams`` (default): the jaxparams layout (see
  :mod:`jaxparams.quant.checkpoint`) under the HF tensor names, plus the source
  ``config.json``, tokenizer files and ``quant_report.json``;
* ``--format gptq``: the HF GPTQ layout (``qweight``/``qzeros``/``scales``/``g_idx``,
  ``quantize_config.json``) for integer methods.

A rules file (YAML) is a list of ``{pattern: GLOB, method: NAME, bits: N, ...}``
entries (first match wins; ``method: keep`` keeps full precision); missing
``method``/``bits``/``group_size`` fall back to the command-line values.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jaxparams import io as jio

__all__ = ["add_parser", "run", "quantize_checkpoint", "method_fields", "read_rules"]

METHODS = ("rtn", "nf4", "hqq", "gptq", "awq", "decoupleq")
_ST_FILES = jio.SENTENCE_TRANSFORMERS_FILES + ("README.md",)


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("quantize", help="Quantize an HF checkpoint (BERT, Llama).",
                     description="Quantize the Linear weights of an HF safetensors checkpoint with "
                     "RTN, NF4, HQQ, GPTQ, AWQ or decoupleQ and write a quantized checkpoint.")
  p.add_argument("src", metavar="SRC_DIR", help="HF checkpoint folder (config.json + safetensors)")
  p.add_argument("out", metavar="OUT_DIR", help="output folder (created atomically)")
  p.add_argument("--method", choices=METHODS, default="rtn")
  p.add_argument("--bits", type=int, default=4, help="2, 3, 4 or 8 (nf4: 4)")
  p.add_argument("--group-size", type=int, default=128,
                 help="rows per group along the input axis; -1 = per channel (nf4: block size)")
  p.add_argument("--calibration", metavar="TEXT_FILE",
                 help="calibration text, one sample per line (needed by gptq, awq, decoupleq)")
  p.add_argument("--rules", metavar="RULES.yml", help="YAML list of {pattern, method, ...} rules")
  p.add_argument("--act-order", action="store_true", help="GPTQ: process columns by decreasing "
                 "Hessian diagonal (desc_act)")
  p.add_argument("--symmetric", action="store_true", help="symmetric grid (rtn, gptq, awq)")
  p.add_argument("--format", choices=("jaxparams", "gptq"), default="jaxparams",
                 help="output layout")
  p.add_argument("--max-length", type=int, default=128, help="calibration tokens per sample")
  p.add_argument("--batch-size", type=int, default=16, help="calibration samples per batch")
  p.add_argument("--max-samples", type=int, default=256, help="calibration samples used")
  p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(func=run)


def method_fields(method: str, bits: int, group_size: int, *, act_order: bool = False,
                  symmetric: bool = False) -> dict[str, Any]:
  """The config fields the command-line flags mean for ``method``.

  Example:
    >>> method_fields('nf4', 4, 64)
    {'block_size': 64}
    >>> method_fields('gptq', 3, 64, act_order=True)['act_order']
    True
  """
  group = None if group_size in (-1, 0) else group_size
  if method == "nf4":
    if bits != 4:
      raise ValueError(f"--method nf4 is 4-bit only, got --bits {bits}")
    return {"block_size": group}
  fields: dict[str, Any] = {"bits": bits, "group_size": group}
  if method == "gptq":
    fields["act_order"] = act_order
  if method in ("rtn", "gptq", "awq") and symmetric:
    fields["symmetric"] = True
  return fields


def read_rules(path: str | Path, default_method: str, default_fields: dict[str, Any]
               ) -> list[tuple[str, Any]]:
  """Reads a YAML rules file into ``[(pattern, spec)]``.

  Raises:
    ValueError: not a list of mappings with ``pattern``.
  """
  import yaml  # pylint: disable=g-import-not-at-top
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such rules file")
  data = yaml.safe_load(path.read_text())
  if isinstance(data, dict) and "rules" in data:
    data = data["rules"]
  if not isinstance(data, list) or not data:
    raise ValueError(f"{path}: expected a non-empty YAML list of rules "
                     "({pattern: ..., method: ..., bits: ...})")
  out = []
  for i, r in enumerate(data):
    if not isinstance(r, dict) or "pattern" not in r:
      raise ValueError(f"{path}: rule {i} must be a mapping with 'pattern', got {r!r}")
    r = dict(r)
    pat = str(r.pop("pattern"))
    method = str(r.pop("method", default_method)).lower()
    if method in ("keep", "none", "fp", "skip"):
      out.append((pat, None))
      continue
    fields = dict(default_fields) if method == default_method else {}
    if method != default_method and "bits" in default_fields and method != "nf4":
      fields["bits"] = default_fields["bits"]
      fields["group_size"] = default_fields.get("group_size", 128)
    fields.update(r)
    out.append((pat, (method, fields)))
  return out


def _read_texts(path: str | Path, max_samples: int) -> list[str]:
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such calibration text file")
  lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
  lines = [ln for ln in lines if ln]
  if not lines:
    raise ValueError(f"{path}: the calibration text is empty")
  if len(lines) > max_samples:
    idx = np.linspace(0, len(lines) - 1, max_samples).round().astype(int)
    lines = [lines[i] for i in idx]
  return lines


def _batches(src: Path, texts: Sequence[str], *, max_length: int, batch_size: int) -> list[dict]:
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  from jaxparams.quant.calibrate import text_batches  # pylint: disable=g-import-not-at-top
  tok_file = src / "tokenizer.json"
  if not tok_file.is_file():
    raise ValueError(f"{src}: no tokenizer.json; calibration text cannot be tokenized")
  return text_batches(Tokenizer.from_file(str(tok_file)), texts, batch_size=batch_size,
                      max_length=max_length)


def quantize_checkpoint(src: str | Path, out: str | Path, rules: Any, *,
                        calibration_texts: Sequence[str] | None = None, fmt: str = "jaxparams",
                        max_length: int = 128, batch_size: int = 16, overwrite: bool = False,
                        progress: Callable[[str, int, int], None] | None = None):
  """Quantizes an HF checkpoint folder by rules and writes ``out``; returns the report.

  Raises:
    ValueError: unsupported architecture, a calibrated method without texts, rules
      matching nothing, a method the GPTQ layout cannot hold, ...
  """
  # pylint: disable=g-import-not-at-top
  from jaxparams import tree as jtree
  from jaxparams.models.hf import from_hf, hf_name_map
  from jaxparams.quant import checkpoint as qckpt
  from jaxparams.quant import rules as qrules
  from jaxparams.quant.calibrate import quantize_model
  src, out = Path(src), Path(out)
  if not src.is_dir():
    raise FileNotFoundError(f"{src}: no such checkpoint folder")
  jio.check_output_dir(out, overwrite)
  if fmt not in ("jaxparams", "gptq"):
    raise ValueError(f"unknown output format {fmt!r}; valid: 'jaxparams', 'gptq'")
  module, params, config = from_hf(src)
  plan, _ = qrules.plan_tree(jtree.flatten(params), rules)
  needs = sorted({s[0] for s in plan.values() if s is not None and qrules._get(s[0]).calibrated})  # pylint: disable=protected-access
  batches = None
  if calibration_texts is not None:
    batches = _batches(src, calibration_texts, max_length=max_length, batch_size=batch_size)
  elif needs:
    raise ValueError(f"method(s) {needs} need calibration text: pass --calibration TEXT_FILE")
  qparams, report = quantize_model(module, params, rules, batches, progress=progress)
  flat = jtree.flatten(qparams, is_leaf=qckpt._is_quant)  # pylint: disable=protected-access
  nmap = hf_name_map(config)
  by_name, transpose, methods = {}, {}, {}
  for path, leaf in flat.items():
    hf, tr = nmap[path]
    if qckpt._is_quant(leaf):  # pylint: disable=protected-access
      by_name[hf] = leaf
      transpose[hf] = tr
      methods[hf] = report.entries[path].method
      if not tr:
        raise ValueError(f"{path}: quantized tensor {hf!r} is not a Linear weight; keep it in "
                         "full precision")
    else:
      a = np.asarray(leaf)
      by_name[hf] = np.ascontiguousarray(a.T) if tr else a
  src_cfg = json.loads((src / "config.json").read_text())
  if fmt == "gptq":
    qckpt.export_gptq(by_name, out, config=src_cfg, copy_from=src, overwrite=overwrite)
  else:
    qckpt.save_quantized(by_name, out, transpose=transpose, methods=methods, config=src_cfg,
                         copy_from=src, overwrite=overwrite,
                         extra_json={"quant_report.json": report.to_dict()},
                         extra_files=[f for f in _ST_FILES if (src / f).is_file()])
  return report


def run(args: argparse.Namespace) -> int:
  from jaxparams.quant import rules as qrules  # pylint: disable=g-import-not-at-top
  fields = method_fields(args.method, args.bits, args.group_size, act_order=args.act_order,
                         symmetric=args.symmetric)
  if args.rules:
    rules = read_rules(args.rules, args.method, fields)
  else:
    rules = [("**", (args.method, fields))]
  for i, (pat, spec) in enumerate(rules):
    qrules.parse_spec(spec, where=f"rule {i} ({pat!r})")  # fail fast on bad names/fields
  texts = _read_texts(args.calibration, args.max_samples) if args.calibration else None

  progress_cm = None
  callback = None
  if not args.no_progress:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress,  # pylint: disable=g-import-not-at-top
                               TextColumn, TimeElapsedColumn)
    progress_cm = Progress(TextColumn("[bold]quantize[/] {task.description}"), BarColumn(),
                           MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
    state: dict[str, Any] = {}

    def callback(path: str, i: int, total: int) -> None:
      if "task" not in state:
        state["task"] = progress_cm.add_task(path, total=total)
      progress_cm.update(state["task"], completed=i, description=path)
  try:
    if progress_cm is not None:
      progress_cm.start()
    report = quantize_checkpoint(args.src, args.out, rules, calibration_texts=texts,
                                 fmt=args.format, max_length=args.max_length,
                                 batch_size=args.batch_size, overwrite=args.overwrite,
                                 progress=callback)
    if progress_cm is not None and "task" in state:
      progress_cm.update(state["task"], completed=report.num_quantized, description="done")
  finally:
    if progress_cm is not None:
      progress_cm.stop()
  errs = [e.error for e in report.quantized() if e.error is not None]
  print(f"wrote {args.out} ({args.format}): {report.num_quantized} tensors quantized, "
        f"{report.bytes_before / 2**20:.2f} MiB -> {report.bytes_after / 2**20:.2f} MiB, "
        f"mean relative weight error {np.mean(errs) if errs else 0:.4f}")
  return 0
