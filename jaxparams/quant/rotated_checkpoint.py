"""Rotated / smoothed / activation-quantized checkpoints on disk (``quantize --rotate ...``).

:func:`quantize_outliers_checkpoint` loads an HF checkpoint (in memory: rotations touch every
block at once), runs :func:`jaxparams.quant.outliers.quantize_outliers` and writes the
jaxparams layout (:func:`jaxparams.quant.checkpoint.save_quantized`) under the HF names of the
*rotated* model's config (``config.json``; a tied head is written untied), plus

* ``jaxparams_rotation.json``: per quantized tensor with online transforms, ``act_bits``,
  ``act_clip``, ``seed`` and which of ``<name>.rot_signs`` / ``<name>.rot_matrix`` /
  ``<name>.rot_smooth`` (float32 tensors in the same safetensors) it has.

:func:`load_outliers_checkpoint` reads it back as a model that runs quantized through
``dot=online_dot``; :func:`dequantize_outliers_checkpoint` (what ``jaxparams dequantize`` calls
for such a folder) writes stock full-precision weights, the rotations and scales multiplied
back into each dequantized matrix, so any tool evaluates it (activation quantization has no
stock format and is dropped there).

Example:
  >>> import tempfile, os
  >>> import jaxparams as jp
  >>> src = os.path.join(os.path.dirname(jp.__file__), '..', 'tests', 'fixtures', 'llama_tiny')
  >>> d = tempfile.mkdtemp()
  >>> rep = quantize_outliers_checkpoint(src, d + '/q', [('**', ('rtn', {'group_size': 16}))],
  ...     OutlierConfig(rotate='hadamard'))     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import io as jio
from jaxparams import tree as jtree
from jaxparams.quant import checkpoint as qckpt
from jaxparams.quant import rules as qrules
from jaxparams.quant.online import OnlineLinear, is_online, online_dot
from jaxparams.quant.outliers import OutlierConfig, quantize_outliers

__all__ = ["ROTATION_FILE", "quantize_outliers_checkpoint", "load_outliers_checkpoint",
           "dequantize_outliers_checkpoint", "is_outliers_checkpoint"]

ROTATION_FILE = "jaxparams_rotation.json"
_PARTS = ("signs", "matrix", "smooth")


def is_outliers_checkpoint(folder: str | Path) -> bool:
  """Whether ``folder`` was written by :func:`quantize_outliers_checkpoint`."""
  return (Path(folder) / ROTATION_FILE).is_file()


def _batches(src: Path, calibration: Any, max_length: int, batch_size: int) -> list | None:
  if calibration is None:
    return None
  if len(calibration) and isinstance(calibration[0], str):
    from jaxparams.calib.corpus import text_batches  # pylint: disable=g-import-not-at-top
    from jaxparams.models.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
    tok = load_tokenizer(src)
    return text_batches(tok, sorted(calibration, key=len), batch_size=batch_size,
                        max_length=max_length)
  return list(calibration)


def quantize_outliers_checkpoint(src: str | Path, out: str | Path, rules: Any,
                                 cfg: OutlierConfig = OutlierConfig(), *,
                                 calibration: Sequence[Any] | None = None, max_length: int = 128,
                                 batch_size: int = 16, overwrite: bool = False,
                                 progress=None) -> qrules.QuantReport:
  """Quantizes the HF checkpoint ``src`` with rotation/smoothing/activation bits into ``out``.

  Args:
    src: HF folder (any family :func:`jaxparams.models.from_hf` opens).
    out: output folder (atomic).
    rules: weight rules (as ``quantize_checkpoint``).
    cfg: :class:`~jaxparams.quant.outliers.OutlierConfig`.
    calibration: texts (one sample each) or model-call batches; needed by calibrated
      methods, smoothing and learned rotations.
    max_length, batch_size: tokenisation of text calibration.
    overwrite: replace ``out``.
    progress: ``progress(path, i, total)``.

  Returns:
    the :class:`~jaxparams.quant.rules.QuantReport` (flax paths).
  """
  from jaxparams.models.hf import from_hf, hf_name_map  # pylint: disable=g-import-not-at-top
  src = Path(src)
  module, params, _ = from_hf(src)
  batches = _batches(src, calibration, max_length, batch_size)
  res = quantize_outliers(module, params, rules, batches, cfg, progress=progress)
  names = hf_name_map(res.config)
  flat = jtree.flatten(res.params, is_leaf=lambda v: is_online(v) or qckpt.is_quant(v)
                       or not isinstance(v, dict))
  tensors: dict[str, Any] = {}
  transpose: dict[str, bool] = {}
  methods: dict[str, str] = {}
  rot: dict[str, Any] = {}
  for path, leaf in flat.items():
    if path not in names:
      raise ValueError(f"quantize_outliers_checkpoint: {path!r} has no HF name for "
                       f"{type(res.config).__name__}")
    hf, tr = names[path]
    if is_online(leaf) and not qckpt.is_quant(leaf.w):
      leaf = leaf.dequantize()     # kept full precision: store the stock weight
    if is_online(leaf):
      entry = {"act_bits": leaf.act_bits, "act_clip": leaf.act_clip, "seed": leaf.seed,
               "parts": [k for k in _PARTS if getattr(leaf, k) is not None]}
      for k in entry["parts"]:
        tensors[f"{hf}.rot_{k}"] = np.asarray(jax.device_get(getattr(leaf, k)), np.float32)
      rot[hf] = entry
      leaf = leaf.w
    if qckpt.is_quant(leaf):
      transpose[hf] = tr
      e = res.report.entries.get(path)
      if e is not None:
        methods[hf] = e.method
      tensors[hf] = leaf
    else:
      arr = np.asarray(jax.device_get(leaf))
      tensors[hf] = arr.T if tr else arr
  qckpt.save_quantized(tensors, out, transpose=transpose, methods=methods,
                       config=res.config.to_hf_dict(), copy_from=src, overwrite=overwrite,
                       extra_json={ROTATION_FILE: {
                           "format": "jaxparams.rotation", "version": 1,
                           "rotate": cfg.rotate, "smooth": cfg.smooth, "act_bits": cfg.act_bits,
                           "tensors": rot}},
                       extra_files=("modules.json", "sentence_bert_config.json",
                                    "1_Pooling/config.json"))
  return res.report


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  meta = jio.read_json(folder / ROTATION_FILE, what="rotation file", folder=folder)
  if not isinstance(meta, dict) or meta.get("format") != "jaxparams.rotation" or not isinstance(meta.get("tensors"), dict):
    raise ValueError(f"{folder}/{ROTATION_FILE}: not a jaxparams rotation file (format "
                     f"{meta.get('format')!r})")
  flat, layout = qckpt.load_quantized_flat(folder)
  return flat, layout, meta["tensors"]


def _online_leaf(folder: Path, name: str, qa: Any, entry: dict, flat: dict) -> OnlineLinear:
  kw = {}
  for k in entry.get("parts", []):
    key = f"{name}.rot_{k}"
    if key not in flat:
      raise ValueError(f"{folder}: {ROTATION_FILE} lists {k!r} for {name!r} but the "
                       f"checkpoint lacks tensor {key!r}")
    kw[k] = jnp.asarray(flat.pop(key), jnp.float32)
  return OnlineLinear(w=qa, act_bits=int(entry.get("act_bits", 0)),
                      act_clip=float(entry.get("act_clip", 1.0)), seed=int(entry.get("seed", 0)),
                      **kw)


def dequantize_outliers_checkpoint(qdir: str | Path, out: str | Path, *, dtype: Any = None,
                                   overwrite: bool = False) -> dict[str, Any]:
  """Writes stock full-precision HF weights from a rotated quantized folder (module doc).

  Returns:
    ``{'tensors': n, 'dequantized': m, 'unrotated': r, 'layout': 'jaxparams+rotation'}``.
  """
  folder = Path(qdir)
  flat, layout, rot = _read(folder)
  meta = layout["tensors"]
  n_deq = n_rot = 0
  with jio.SafetensorsWriter(out, overwrite=overwrite) as w:
    for name in list(flat):
      if name not in flat:
        continue      # a rot_ part consumed below
      leaf = flat[name]
      if name in rot:
        lf = _online_leaf(folder, name, leaf, rot[name], flat)
        arr = lf.dequantize(dtype or meta.get(name, {}).get("dtype", "float32"))
        if meta.get(name, {}).get("transpose"):
          arr = arr.T
        n_rot += 1
        n_deq += 1
      elif qckpt.is_quant(leaf):
        arr = qckpt.dequantize_leaf(leaf, meta.get(name, {}), dtype)
        n_deq += 1
      elif name.rsplit(".", 1)[-1].startswith("rot_"):
        continue
      else:
        arr = np.asarray(leaf)
      w.add(name, np.ascontiguousarray(arr))
    cfg = dict(jio.read_model_config(folder))  # copied into the output: the strict reader
    cfg.pop("quantization_config", None)
    w.write_json("config.json", cfg)
    w.copy_from(folder)
  return {"tensors": len(flat) - 0, "dequantized": n_deq, "unrotated": n_rot,
          "layout": "jaxparams+rotation"}


def load_outliers_checkpoint(qdir: str | Path) -> tuple[Any, Any, Any]:
  """``(module, params, config)`` of a rotated quantized folder, runnable quantized
  (``module`` is built with ``dot=online_dot``)."""
  from jaxparams.models.families import family  # pylint: disable=g-import-not-at-top
  from jaxparams.models.hf import hf_name_map  # pylint: disable=g-import-not-at-top
  folder = Path(qdir)
  flat, _, rot = _read(folder)
  raw = dict(jio.read_model_config(folder))
  raw.pop("quantization_config", None)
  fam = family(raw.get("model_type", "?"))
  config = fam.config_cls.from_hf_dict(raw)
  out: dict[str, Any] = {}
  for path, (hf, tr) in hf_name_map(config).items():
    if hf not in flat:
      continue
    leaf = flat[hf]
    if hf in rot:
      leaf = _online_leaf(folder, hf, leaf, rot[hf], flat)
    elif not qckpt.is_quant(leaf):
      leaf = jnp.asarray(leaf.T if tr else leaf)
    out[path] = leaf
  module = fam.module_cls(config, dot=online_dot)
  return module, jtree.unflatten(out), config


def run_cli(args: Any, rules: Any, texts: Sequence[str] | None) -> int:
  """``jaxparams quantize --rotate/--smooth/--act-bits``: the CLI's call (flags parsed there)."""
  smooth = args.smooth
  if smooth is not None and smooth != "auto":
    try:
      smooth = float(smooth)
    except ValueError:
      raise ValueError(f"--smooth must be a number in [0, 1] or 'auto', got {smooth!r}") from None
  if args.format != "jaxparams":
    raise ValueError("--rotate/--smooth/--act-bits write the jaxparams layout only (the online "
                     "transforms have no GPTQ-format field); drop --format gptq")
  cfg = OutlierConfig(rotate=args.rotate, smooth=smooth, act_bits=args.act_bits)
  report = quantize_outliers_checkpoint(args.src, args.out, rules, cfg, calibration=texts,
                                        max_length=args.max_length,
                                        batch_size=args.batch_size, overwrite=args.overwrite)
  errs = [e.error for e in report.quantized() if e.error is not None]
  print(f"wrote {args.out} (jaxparams, rotate={args.rotate}, smooth={smooth}, "
        f"act_bits={args.act_bits}): {report.num_quantized} tensors quantized, "
        f"{report.bytes_before / 2**20:.2f} MiB -> {report.bytes_after / 2**20:.2f} MiB, "
        f"mean relative weight error {np.mean(errs) if errs else 0:.4f}")
  return 0
