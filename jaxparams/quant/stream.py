"""Streaming quantization of HF checkpoints: memory bounded by one block, not the model.

:func:`quantize_checkpoint` reads an HF safetensors checkpoint (Llama, BERT/MiniLM)
from disk and writes the quantized checkpoint (the jaxparams layout of
:mod:`jaxparams.quant.checkpoint`, or the HF GPTQ layout):

* **data-free methods** (RTN, NF4, FP8, HQQ) and kept tensors go tensor by tensor:
  read (memory-mapped), quantize, write, drop;
* **calibrated methods** (GPTQ, AWQ, decoupleQ) go block by block, as GPTQ's own
  sequential procedure: the calibration batches are embedded once, then for each
  transformer block ``layers_i`` its weights are read, its layer-input statistics
  (:class:`~jaxparams.calib.InputStats`) collected on the previous block's outputs,
  its Linear weights quantized, the block re-run with the dequantized weights to
  give the next block's inputs, and everything of the block written and dropped.

Peak memory is about one block (plus the embedding, the calibration activations
and the output shard buffer ``max_shard_bytes``). The per-tensor quantization is
:func:`jaxparams.quant.rules.quantize_leaf`, the same function the tree API runs,
and blocks are found by flax interception (:mod:`jaxparams.calib.capture`), so the
model code is not duplicated. :func:`dequantize_checkpoint` streams back to a
full-precision HF checkpoint tensor by tensor.

Example:
  >>> import os, tempfile
  >>> from pathlib import Path
  >>> import jaxparams.quant as jq
  >>> src = Path(jq.__file__).parents[2] / 'tests/fixtures/llama_tiny'
  >>> out = os.path.join(tempfile.mkdtemp(), 'q')
  >>> rep = quantize_checkpoint(src, out, [('**', ('rtn', {'bits': 4, 'group_size': 32}))])
  >>> rep.num_quantized, sorted(os.listdir(out))[:3]
  (14, ['README.md', 'config.json', 'jaxparams_quant.json'])
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxparams import io as jio
from jaxparams import tree as jtree
from jaxparams.calib.capture import as_call, check_batches, linear_order, stats_runner
from jaxparams.calib.corpus import text_batches
from jaxparams.quant import card as qcard
from jaxparams.quant import checkpoint as qckpt
from jaxparams.quant import report as qreport
from jaxparams.quant import rules as qrules
from jaxparams.quant.methods import get_record
from jaxparams.models.config_check import check_hf_config
from jaxparams.transform.prefetch import read_tensor

log = logging.getLogger(__name__)

__all__ = ["quantize_checkpoint", "dequantize_checkpoint", "ST_FILES"]

# Side files copied next to a quantized checkpoint (tokenizer files are always copied).
ST_FILES = jio.SENTENCE_TRANSFORMERS_FILES + ("README.md",)
_BLOCK_NAME = re.compile(r"^(layers?|blocks?|h)[_.]?\d+$")


# ----------------------------------------------------------------------------- the model
@dataclasses.dataclass
class _Model:
  """What the streaming driver knows of a checkpoint before reading any weight."""
  reader: Any
  module: nn.Module
  config: Any
  nmap: dict[str, tuple[str, bool]]      # flax path -> (hf name, transpose)
  src_names: dict[str, str]              # hf name -> name in the files
  abstract: dict[str, jax.ShapeDtypeStruct]
  files: dict = dataclasses.field(default_factory=dict)
  extra: dict[str, str] = dataclasses.field(default_factory=dict)  # unmapped: name -> in files

  def read_hf(self, hf: str) -> np.ndarray:
    """One tensor as stored, into a fresh buffer (pread, not mmap: freed pages leave RSS)."""
    return read_tensor(self.reader, self.src_names[hf], self.files)

  def read(self, path: str) -> np.ndarray:
    """One parameter in flax layout."""
    hf, tr = self.nmap[path]
    a = self.read_hf(hf)
    return a.T if tr else a

  def close(self) -> None:
    for f in self.files.values():
      f.close()
    self.files.clear()


def _open_model(src: Path, reader: Any) -> _Model:
  from jaxparams.models import hf as mhf  # pylint: disable=g-import-not-at-top
  cfg = reader.config()
  if cfg is None:
    raise ValueError(f"{src}: no config.json; the architecture (model_type) is unknown")
  arch = mhf.ARCHITECTURES.get(cfg.get("model_type"))
  if arch is None:
    raise ValueError(f"{src}: config.json model_type {cfg.get('model_type')!r} is not supported; "
                     f"supported: {sorted(mhf.ARCHITECTURES)}")
  by_norm = {arch.normalize(n): n for n in reader.names()}
  # The config against the headers first (as from_hf): nothing below may grow with a hostile one.
  where = str((src if src.is_dir() else src.parent) / "config.json")
  check_hf_config(cfg, arch, {n: reader.spec(n).shape for n in reader.names()}, where)
  overrides = {}
  if cfg.get("model_type") == "bert":
    overrides["add_pooling_layer"] = "pooler.dense.weight" in by_norm
  config = arch.config_cls.from_hf_dict(cfg, **overrides)
  module = arch.module_cls(config)
  nmap = arch.name_map(config)
  missing = [hf for hf, _ in nmap.values() if hf not in by_norm]
  if missing:
    raise ValueError(f"{src}: checkpoint is missing {len(missing)} tensor(s) needed by "
                     f"{type(module).__name__}: {missing[:8]}")
  shapes = jtree.flatten(jax.eval_shape(lambda: module.init(jax.random.key(0),
                                                            jnp.zeros((1, 2), jnp.int32)))["params"])
  abstract = {}
  for path, (hf, tr) in nmap.items():
    spec = reader.spec(by_norm[hf])
    shape = tuple(spec.shape[::-1]) if tr else tuple(spec.shape)
    if shape != tuple(shapes[path].shape):
      raise ValueError(f"{spec.file}: tensor {by_norm[hf]!r} has shape {tuple(spec.shape)}, "
                       f"expected {tuple(shapes[path].shape)[::-1] if tr else shapes[path].shape}"
                       f" for {path!r}")
    abstract[path] = jax.ShapeDtypeStruct(shape, jio.to_numpy_dtype(spec.dtype)
                                          if isinstance(spec.dtype, str) else spec.dtype)
  order = list(jtree.flatten(jtree.unflatten({p: 0 for p in abstract})))
  abstract = {p: abstract[p] for p in order}
  used = {hf for hf, _ in nmap.values()}
  extra = {n: f for n, f in by_norm.items() if n not in used}   # buffers such as position_ids
  return _Model(reader, module, config, nmap, {hf: by_norm[hf] for hf, _ in nmap.values()},
                abstract, extra=extra)


# ----------------------------------------------------------------------------- blocks
class _Stop(Exception):
  """Raised by the interceptor at the first block: carries its call arguments."""

  def __init__(self, args, kwargs):
    super().__init__("stop")
    self.args, self.kwargs = args, kwargs


def _top_level_calls(m: _Model, batch: Any) -> tuple[list[str], dict[str, nn.Module]]:
  """Top-level submodules in call order, and an unbound copy of each block (abstract trace)."""
  order: list[str] = []
  blocks: dict[str, nn.Module] = {}

  def interceptor(next_fun, a, kw, context):
    path = context.module.scope.path if context.module.scope is not None else ()
    if context.method_name == "__call__" and len(path) == 1:
      if path[0] not in order:
        order.append(path[0])
      if _BLOCK_NAME.match(path[0]) and path[0] not in blocks:
        blocks[path[0]] = context.module.clone(parent=None)
    return next_fun(*a, **kw)

  a, kw = as_call(batch, 0)

  def f(p, a, kw):
    with nn.intercept_methods(interceptor):
      return m.module.apply({"params": p}, *a, **kw)

  jax.eval_shape(f, jtree.unflatten(dict(m.abstract)),
                 tuple(jnp.asarray(x) for x in a),
                 {k: jnp.asarray(v) for k, v in kw.items() if v is not None})
  return order, blocks


def _block_inputs(module: nn.Module, first_block: str):
  """jit ``f(prefix_params, args, kwargs) -> (args, kwargs)`` of the first block's call."""

  def run(params, a, kw):
    def interceptor(next_fun, a_, kw_, context):
      path = context.module.scope.path if context.module.scope is not None else ()
      if context.method_name == "__call__" and tuple(path) == (first_block,):
        raise _Stop(a_, kw_)
      return next_fun(*a_, **kw_)

    try:
      with nn.intercept_methods(interceptor):
        module.apply({"params": params}, *a, **kw)
    except _Stop as s:
      return s.args, s.kwargs
    raise ValueError(f"the model never called its first block {first_block!r}")

  return jax.jit(run)


def _nested(flat: Mapping[str, Any], prefix: str) -> Any:
  n = len(prefix) + 1
  return jtree.unflatten({p[n:]: v for p, v in flat.items()})


# ----------------------------------------------------------------------------- writing
class _Out:
  """Writes tensors of either layout as they come; the JSON/config at the end."""

  def __init__(self, writer: Any, fmt: str, m: _Model):
    self.w, self.fmt, self.m = writer, fmt, m
    self.entries: dict[str, dict] = {}
    self.gptq_tensors: dict[str, Any] = {}
    self.gptq_format = "gptq"

  def add_float(self, path: str, value: Any) -> None:
    """A full-precision tensor changed by a block-wise method (e.g. a norm scale under LET)."""
    hf, tr = self.m.nmap[path]
    a = np.asarray(value)
    self.w.add(hf, a.T if tr else a)

  def add(self, path: str, leaf: Any, method: str | None) -> None:
    hf, tr = self.m.nmap[path]
    if method is None:
      self.w.add(hf, self.m.read_hf(hf))
      return
    if not tr:
      raise ValueError(f"{path}: quantized tensor {hf!r} is not a Linear weight; keep it in full "
                       "precision")
    if self.fmt == "gptq":
      for name, arr in qckpt.gptq_encode(hf, leaf, checkpoint_format=self.gptq_format).items():
        self.w.add(name, arr)
      self.gptq_tensors[hf] = qckpt.gptq_summary(hf, leaf)
      return
    meta = qckpt.layout_entry(leaf, transpose=True, method=method)
    self.entries[hf] = meta
    for part, arr in qckpt.encode_parts(leaf).items():
      self.w.add(f"{hf}.{part}", arr)


# ----------------------------------------------------------------------------- quantize
def _batches_for(src: Path, calibration: Any, max_length: int, batch_size: int) -> list:
  if calibration is None:
    return []
  cal = list(calibration) if not isinstance(calibration, (Mapping, np.ndarray)) else [calibration]
  if cal and all(isinstance(t, str) for t in cal):
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    tok_file = src / "tokenizer.json"
    if not tok_file.is_file():
      raise ValueError(f"{src}: no tokenizer.json; calibration text cannot be tokenized")
    return text_batches(Tokenizer.from_file(str(tok_file)), cal, batch_size=batch_size,
                        max_length=max_length)
  batches = check_batches(cal)
  for i, b in enumerate(batches):
    as_call(b, i)
  return batches


def quantize_checkpoint(src: str | Path, out: str | Path, rules: Any, *,
                        calibration: Any = None, fmt: str = "jaxparams",
                        keep: Sequence[Any] = qrules.DEFAULT_KEEP, max_length: int = 128,
                        batch_size: int = 16, overwrite: bool = False,
                        max_shard_bytes: float = 1e9,
                        progress: Callable[[str, int, int], None] | None = None,
                        true_sequential: bool = False) -> qrules.QuantReport:
  """Quantizes an HF checkpoint folder by rules, streaming; returns the report.

  Args:
    src: HF folder (``config.json`` + safetensors) of a Llama or BERT model.
    out: output folder (atomic: nothing is left on an error).
    rules: as for :func:`jaxparams.quant.quantize_tree` (``[(pattern, spec)]``, on flax
      paths such as ``layers_0/attn/q_proj/kernel``).
    calibration: texts (tokenized with ``src/tokenizer.json``) or calibration batches
      (see :func:`jaxparams.calib.capture.as_call`); required by calibrated methods.
    fmt: ``'jaxparams'`` (default) or ``'gptq'`` (HF GPTQ layout, integer methods).
    keep: full-precision defaults (:data:`jaxparams.quant.rules.DEFAULT_KEEP`).
    max_length: calibration tokens per text.
    batch_size: calibration texts per batch.
    overwrite: replace ``out``.
    max_shard_bytes: output shard size (results are written as they come).
    progress: ``progress(path, index, total)`` before each quantized tensor.
    true_sequential: inside a block, recapture each stage's inputs (q/k/v, then the attention
      output, then gate/up, then down) with the earlier stages already quantized (GPTQ's
      ``--true-sequential``); default: all layers of a block calibrated on its inputs at once.

  Raises:
    ValueError: unsupported architecture, calibrated methods without calibration,
      rules matching nothing, a layout that cannot hold a method, bad inputs.
  """
  src, out = Path(src), Path(out)
  if not src.is_dir():
    raise FileNotFoundError(f"{src}: no such checkpoint folder")
  if fmt not in ("jaxparams", "gptq"):
    raise ValueError(f"unknown output format {fmt!r}; valid: 'gptq', 'jaxparams'")
  jio.check_output_dir(out, overwrite)
  with jio.open_checkpoint(src) as reader:
    m = _open_model(src, reader)
    try:
      return _quantize(src, out, m, rules, calibration=calibration, fmt=fmt, keep=keep,
                       max_length=max_length, batch_size=batch_size, overwrite=overwrite,
                       max_shard_bytes=max_shard_bytes, progress=progress,
                       true_sequential=true_sequential)
    finally:
      m.close()


def _quantize(src: Path, out: Path, m: _Model, rules: Any, *, calibration, fmt, keep,
              max_length, batch_size, overwrite, max_shard_bytes, progress,
              true_sequential=False):
  reader = m.reader
  plan, reasons = qrules.plan_tree(m.abstract, rules, keep=keep)
  calibrated = [p for p, s in plan.items() if s is not None and qrules.is_calibrated(s[0])]
  batches = _batches_for(src, calibration, max_length, batch_size)
  if calibrated and not batches:
    raise ValueError(f"method(s) {sorted({plan[p][0] for p in calibrated})} need calibration: "
                     "pass calibration= texts or batches (CLI: --calibration TEXT_FILE)")
  todo = [p for p, s in plan.items() if s is not None]
  log.info("quantizing %s -> %s: %d of %d tensors (%d calibrated, %d calibration batches), "
           "format %s", src, out, len(todo), len(plan), len(calibrated), len(batches or ()), fmt)
  report = qrules.QuantReport()
  src_cfg = dict(reader.config())
  meta = ({"format": "pt", "jaxparams_quant_version": str(qckpt.VERSION)}
          if fmt == "jaxparams" else None)
  kw = {"metadata": meta} if meta else {}
  # Each result goes to disk as it comes (not one shard in memory): header room for up to
  # four outputs per source tensor (qweight, scales, zeros, g_idx).
  kw["header_reserve"] = 2048 + sum(4 * (len(n) + 100) for n in reader.names())
  with jio.SafetensorsWriter(out, overwrite=overwrite, max_shard_bytes=max_shard_bytes,
                             **kw) as w:
    sink = _Out(w, fmt, m)
    # v1 'gptq' stores zero - 1, so a zero point of 0 (asymmetric groups) cannot be written
    sink.gptq_format = _gptq_format(plan)
    counter = {"i": 0}

    def quantize(path, w_, stats=None, *, qa=None, seconds=0.0):
      if qa is not None:            # computed by a block-wise method: only recorded
        report.entries[path] = qreport.make_entry(path, w_, qa, plan[path][0], reasons[path],
                                                  stats=stats, seconds=seconds)
        return qa
      if progress is not None:
        progress(path, counter["i"], len(todo))
      counter["i"] += 1
      return qrules.quantize_planned(path, w_, plan[path], reasons[path], report, stats=stats)

    done: set[str] = set()
    if batches:       # sequential, block by block (data-free layers get output errors too)
      done = _calibrated_blocks(m, plan, batches, sink, quantize, true_sequential)
    for path in m.abstract:                       # everything else: tensor by tensor
      if path in done:
        continue
      if plan[path] is None:
        sink.add(path, None, None)
      else:
        w_ = jnp.asarray(m.read(path))
        sink.add(path, quantize(path, w_), plan[path][0])
        del w_
    for name, fname in m.extra.items():     # tensors the model does not use, kept as they are
      w.add(name, read_tensor(reader, fname, m.files))
    report = qrules.finish_report(m.abstract, report, reasons)
    if fmt == "gptq":
      qcfg = qckpt.gptq_config(sink.gptq_tensors, checkpoint_format=sink.gptq_format)
      if "block_name_to_quantize" not in qcfg:
        raise ValueError(f"--format gptq: the quantized tensors {sorted(sink.gptq_tensors)[:4]} "
                         "are not all Linear weights of one stack of numbered blocks, which GPTQ "
                         "loaders require; keep the others in full precision")
      w.write_json(qckpt.GPTQ_CONFIG_FILE, qcfg)
      w.write_json("config.json", {**src_cfg, "quantization_config": qcfg})
      w.copy_from(src)
      w.copy_from(src, jio.SENTENCE_TRANSFORMERS_FILES)
    else:
      order = [m.nmap[p][0] for p in m.abstract]
      entries = {hf: sink.entries[hf] for hf in order if hf in sink.entries}
      w.write_json(qckpt.LAYOUT_FILE, {"format": qckpt.FORMAT, "version": qckpt.VERSION,
                                       "tensors": entries})
      w.write_json("config.json", {**src_cfg,
                                   "quantization_config": qcard.quantization_config(qckpt.VERSION)})
      w.write_json("quant_report.json", report.to_dict())
      w.copy_from(src)
      w.copy_from(src, jio.SENTENCE_TRANSFORMERS_FILES)
      (w.folder_tmp / "README.md").write_text(_card(src, report))
  log.info("wrote %s", out)
  return report


def _gptq_format(plan: Mapping[str, Any]) -> str:
  """``'gptq'`` (v1) when every planned quantizer is symmetric, else ``'gptq_v2'``."""
  specs = [s for s in plan.values() if s is not None]
  return "gptq" if all(getattr(s[1], "symmetric", False) for s in specs) else "gptq_v2"


def _card(src: Path, report: qrules.QuantReport) -> str:
  methods: dict[str, int] = {}
  bits: dict[str, Any] = {}
  for e in report.quantized():
    methods[e.method] = methods.get(e.method, 0) + 1
    bits.setdefault(e.method, set()).add(e.bits)
  return qcard.model_card(src.resolve().name, methods,
                          bits={m: ", ".join(str(b) for b in sorted(v, key=str))
                                for m, v in bits.items()})


def _calibrated_blocks(m: _Model, plan: Mapping[str, Any], batches: list, sink: _Out,
                       quantize: Callable, true_sequential: bool = False) -> set[str]:
  """Quantizes the transformer blocks sequentially; returns the flax paths written."""
  order, blocks = _top_level_calls(m, batches[0])
  block_names = [n for n in order if n in blocks]
  log.info("calibrated quantization block by block: %s", ", ".join(block_names))
  linears = linear_order(m.module, jtree.unflatten(dict(m.abstract)), batches[0])
  calibrated = [p for p, s in plan.items() if s is not None and qrules.is_calibrated(s[0])]
  outside = [p for p in calibrated if p.split("/", 1)[0] not in blocks]
  if outside:
    raise ValueError(f"calibrated quantization of {outside[:4]} (outside the transformer blocks) "
                     "is not supported when streaming; keep them or use a calibration-free "
                     "method (or jaxparams.quant.quantize_model in memory)")
  never = [p for p in calibrated if p not in linears]
  if never:
    raise ValueError(f"layer(s) {never[:4]} never ran on the calibration batch; they cannot be "
                     "calibrated (keep them or use a calibration-free method)")
  learned = [p for p in calibrated if plan[p][0] == "autoround"]
  if learned:       # block-wise AutoRound stacks the samples: one sequence length for all
    batches = _pad_batches(batches)
  first = block_names[0]
  prefix_mods = order[:order.index(first)]
  prefix = {p: jnp.asarray(m.read(p)) for p in m.abstract if p.split("/", 1)[0] in prefix_mods}
  get_inputs = _block_inputs(m.module, first)
  states, masks = [], []
  pparams = jtree.unflatten(prefix)
  for i, batch in enumerate(batches):
    a, kw = as_call(batch, i)
    args, kwargs = get_inputs(pparams, tuple(jnp.asarray(x) for x in a),
                              {k: jnp.asarray(v) for k, v in kw.items() if v is not None})
    states.append((args, kwargs))
    mk = kw.get("attention_mask")
    masks.append(None if mk is None else jnp.asarray(mk))
  del prefix, pparams
  done: set[str] = set()
  # block-wise methods (OmniQuant) train against the full-precision chain's block outputs
  blockwise = {p: get_record(s[0]).info["block"] for p, s in plan.items()
               if s is not None and "block" in get_record(s[0]).info}
  # AutoRound's and OmniQuant's targets: the fp model's chain
  fp_states = list(states) if learned or blockwise else None
  for name in block_names:
    module = blocks[name]
    paths = [p for p in m.abstract if p.split("/", 1)[0] == name]
    flat = {p: jnp.asarray(m.read(p)) for p in paths}
    todo = [p for p in linears if p in flat and plan[p] is not None]
    stats = _collect(module, name, flat, todo, states, masks) if todo else {}
    apply = _block_apply(module)
    params = _nested(flat, name)
    fp_next = None
    if fp_states is not None:
      fp_next = [((apply(params, args, kwargs),) + tuple(args[1:]), kwargs)
                 for args, kwargs in fp_states]
      ar = [p for p in todo if p in learned]
      if ar:
        stats = _autoround_block(module, name, flat, {p: plan[p][1] for p in ar}, stats,
                                 states, fp_next, masks)
    current = dict(flat)
    changed: dict[str, Any] = {}
    if fp_next is not None:
      targets = [a[0] for a, _ in fp_next]
      n = len(name) + 1
      for fn in dict.fromkeys(blockwise[p] for p in todo if p in blockwise):
        mine = [p for p in todo if blockwise.get(p) is fn]
        t0 = time.perf_counter()
        res = fn(module, {p[n:]: v for p, v in flat.items()},
                 {p[n:]: plan[p][1] for p in mine}, states, targets, masks)
        secs = (time.perf_counter() - t0) / len(mine)
        log.info("%s: block-wise %s, loss %.3g -> %.3g", name, plan[mine[0]][0],
                 res.losses[0], res.losses[-1])
        for p in mine:
          quantize(p, flat[p], stats.get(p), qa=res.qarrays[p[n:]], seconds=secs)
          sink.add(p, res.qarrays[p[n:]], plan[p][0])
          done.add(p)
        current.update({f"{name}/{r}": v for r, v in res.params.items()})
        changed.update({f"{name}/{r}": v for r, v in res.changed.items()})
    rest = [p for p in todo if p not in done]
    stages = _stages(rest, stats) if true_sequential else [rest]
    for i, stage in enumerate(stages):
      if i:      # true-sequential: this stage sees the earlier stages of the block quantized
        again = [p for p in stage if p not in learned]
        if again:
          stats.update(_collect(module, name, current, again, states, masks))
      for p in stage:
        qa = quantize(p, flat[p], stats.get(p))
        current[p] = qrules.effective_weight(qa, flat[p].dtype).reshape(flat[p].shape)
        sink.add(p, qa, plan[p][0])
        done.add(p)
    for p in paths:
      if p not in done:
        if p in changed:                           # full precision, changed by a block method
          sink.add_float(p, changed[p])
        elif plan[p] is not None:                  # planned but not a called linear
          qa = quantize(p, flat[p])
          sink.add(p, qa, plan[p][0])
        else:
          sink.add(p, None, None)
        done.add(p)
    params = _nested(current, name)
    states = [((apply(params, args, kwargs),) + tuple(args[1:]), kwargs)
              for args, kwargs in states]
    if fp_next is not None:
      fp_states = fp_next
    del flat, current, params, stats
  return done


def _collect(module: nn.Module, name: str, flat: Mapping[str, jax.Array], want: list,
             states: list, masks: list) -> dict[str, Any]:
  """Input statistics of the block's layers ``want`` (full paths) over all batches."""
  stats: dict[str, Any] = {}
  run = stats_runner(module, [p[len(name) + 1:] for p in want])
  params = _nested(flat, name)
  for (args, kwargs), mk in zip(states, masks):
    got = run(params, args, kwargs, mk)
    for rel, s in got.items():
      full = f"{name}/{rel}"
      stats[full] = stats[full] + s if full in stats else s
  for p, s in stats.items():
    if not bool(jnp.all(jnp.isfinite(s.xtx))):
      raise ValueError(f"calibration inputs of {p!r} contain NaN/inf (X^T X not finite)")
  return stats


def _stages(todo: list, stats: Mapping[str, Any]) -> list[list[str]]:
  """Consecutive layers reading the same input (equal ``X^T X``: q/k/v, gate/up) form a stage."""
  stages: list[list[str]] = []
  for p in todo:
    prev = stages[-1][-1] if stages else None
    if (prev is not None and p in stats and prev in stats
        and stats[p].xtx.shape == stats[prev].xtx.shape
        and bool(jnp.array_equal(stats[p].xtx, stats[prev].xtx))):
      stages[-1].append(p)
    else:
      stages.append([p])
  return stages


def _pad_batches(batches: list) -> list:
  """Right-pads dict batches (``input_ids`` and same-shaped arrays) to one sequence length."""
  if not all(isinstance(b, Mapping) and "input_ids" in b for b in batches):
    return batches
  t = max(np.shape(b["input_ids"])[1] for b in batches)
  out = []
  for b in batches:
    shape = np.shape(b["input_ids"])
    out.append({k: (np.pad(np.asarray(v), ((0, 0), (0, t - shape[1])))
                    if v is not None and np.shape(v) == shape else v) for k, v in b.items()})
  return out


def _stack(trees: list) -> Any:
  """Concatenates per-batch call trees ``(args, kwargs)`` along the sample axis.

  A leaf whose leading axis is its batch's size (that of ``args[0]``, the hidden states) is
  per-sample and concatenated; a leaf with a leading 1 in a larger batch is broadcast and
  shared. With batches of one sample every leaf is concatenated (broadcasting still holds).
  """
  sizes = [t[0][0].shape[0] for t in trees]

  def cat(*xs):
    if all(x.shape[0] == b for x, b in zip(xs, sizes)):
      return jnp.concatenate(xs, axis=0)
    if all(x.shape[0] == 1 and x.shape == xs[0].shape for x in xs):
      return xs[0]
    raise ValueError(f"calibration batches disagree on a block input: shapes "
                     f"{[x.shape for x in xs]} for batch sizes {sizes}")
  return jax.tree.map(cat, *trees)


def _autoround_block(module: nn.Module, name: str, flat: Mapping[str, jax.Array],
                     configs: Mapping[str, Any], stats: Mapping[str, Any], states: list,
                     fp_next: list, masks: list) -> dict[str, Any]:
  """Block-wise AutoRound: learned rounding of ``configs``' layers; their stats carry it."""
  from jaxparams.quant.autoround import LearnedRounding, autoround_block  # pylint: disable=g-import-not-at-top
  n = len(name) + 1

  def apply(rel_flat, x):
    a, kw = x
    return module.apply({"params": jtree.unflatten(dict(rel_flat))}, *a, **kw)

  inputs = _stack([(tuple(a), {k: v for k, v in kw.items() if v is not None})
                   for a, kw in states])
  targets = jnp.concatenate([a[0] for a, _ in fp_next], axis=0)
  mask = None if any(m is None for m in masks) else jnp.concatenate(masks, axis=0)
  rel = {p[n:]: v for p, v in flat.items()}
  learned, losses = autoround_block(apply, rel, {p[n:]: c for p, c in configs.items()},
                                    inputs, targets, mask, name=name)
  if len(losses):
    log.info("autoround %s: loss %.3e -> best %.3e", name, float(losses[0]), float(losses.min()))
  out = dict(stats)
  for p in configs:
    s, lp = stats[p], learned[p[n:]]
    out[p] = LearnedRounding(xtx=s.xtx, abs_sum=s.abs_sum, count=s.count, v=lp["v"],
                             alpha=lp["alpha"], beta=lp["beta"])
  return out


def _block_apply(module: nn.Module):
  return jax.jit(lambda p, a, kw: module.apply({"params": p}, *a, **kw))


# ----------------------------------------------------------------------------- dequantize
def dequantize_checkpoint(qdir: str | Path, out: str | Path, *, dtype: Any = None,
                          overwrite: bool = False, max_shard_bytes: float = 1e9
                          ) -> dict[str, Any]:
  """Writes the full-precision HF checkpoint of a quantized one, tensor by tensor.

  Works for the jaxparams layout and the HF GPTQ layout; each quantized tensor is
  rebuilt as a :class:`~jaxparams.quant.QArray` and dequantized by it (HF Linear
  weights come back as ``dequantize().T``).

  Args:
    qdir: the quantized folder.
    out: output folder (atomic).
    dtype: dtype of the dequantized tensors (a name such as ``'bfloat16'``); default the
      original one: the jaxparams layout records it per tensor; for GPTQ it is
      ``config.json`` ``torch_dtype``/``dtype``, else that of the full-precision tensors.
    overwrite: replace ``out``.
    max_shard_bytes: output shard size.

  Returns:
    ``{'layout', 'tensors', 'dequantized'}``.

  Raises:
    ValueError: not a quantized checkpoint, a mismatched layout, an unknown dtype.
  """
  qdir, out = Path(qdir), Path(out)
  if not qdir.is_dir():
    raise FileNotFoundError(f"{qdir}: no such folder")
  jio.check_output_dir(out, overwrite)
  if dtype is not None:
    dtype = jio.parse_dtype(dtype, what="--dtype") if isinstance(dtype, str) else np.dtype(dtype)
  layout = qckpt.detect_layout(qdir)
  if layout == "plain":
    raise ValueError(f"{qdir}: not a quantized checkpoint (no {qckpt.LAYOUT_FILE} nor "
                     f"{qckpt.GPTQ_CONFIG_FILE})")
  n = n_q = 0
  log.info("dequantizing %s -> %s", qdir, out)
  with jio.SafetensorsWriter(out, overwrite=overwrite, max_shard_bytes=max_shard_bytes) as w:
    for name, leaf, meta in qckpt.iter_quantized(qdir):
      if qckpt.is_quant(leaf):
        w.add(name, qckpt.dequantize_leaf(leaf, meta, dtype))
        n_q += 1
      else:
        w.add(name, np.asarray(leaf))
      n += 1
    cfg_file = qdir / "config.json"
    if cfg_file.is_file():
      cfg = json.loads(cfg_file.read_text())
      cfg.pop("quantization_config", None)
      if dtype is not None:
        cfg["torch_dtype"] = str(np.dtype(dtype))
        if "dtype" in cfg:                        # transformers >= 4.56 name
          cfg["dtype"] = str(np.dtype(dtype))
      w.write_json("config.json", cfg)
    w.copy_from(qdir)
    w.copy_from(qdir, jio.SENTENCE_TRANSFORMERS_FILES)
    card = qdir / "README.md"        # the source's card, not ours (it says "quantized")
    if card.is_file() and not qcard.is_jaxparams_card(card.read_text(errors="replace")):
      w.copy_from(qdir, ["README.md"])
  return {"layout": layout, "tensors": n, "dequantized": n_q}
