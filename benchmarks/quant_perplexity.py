"""Quantization perplexity on the small Llama LM: is the methods' ranking the same on a causal LM?

The model is the byte-level Llama of ``configs/prune_lm.py:dense`` (2 blocks, hidden 128,
GQA 4/2 heads, 459k parameters), trained by ``jaxparams.train`` on the configs' corpus
(Python standard-library sources) and cached in ``--work`` (trained once, then reused).
Every Linear kernel of the two blocks (14 matrices; embedding, head and norms stay float32)
is quantized by ``jaxparams.quant.quantize_checkpoint`` (streaming, block by block, the
CLI's code path) with each method, the result dequantized, and the perplexity measured on
the corpus's held-out split (files the training never saw).

Calibration: ``--nsamples`` windows of ``--seqlen`` bytes from the training split (OmniQuant's
reference uses 128 x 2048 WikiText-2 tokens; scaled down for this CPU and the model's
128-token context), batches of ``--batch`` windows (one AdamW step per batch for OmniQuant).

Run:  python benchmarks/quant_perplexity.py [--work /tmp/qppl] [--methods rtn,gptq,...]
Writes benchmarks/results/quant_perplexity.md (and .json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = ((4, 128), (4, 64), (3, 128), (3, 64), (2, 64))
METHODS = ("rtn", "gptq", "awq", "decoupleq", "omniquant", "omniquant+let")


def _spec(method: str, bits: int, group: int) -> tuple[str, dict]:
  if method == "omniquant+let":
    return "omniquant", {"bits": bits, "group_size": group, "let": True}
  return method, {"bits": bits, "group_size": group}


def train_model(work: Path, steps: int) -> Path:
  """Trains (once) the LM and writes it as an HF folder ``work/hf``; returns that folder."""
  import jax
  import orbax.checkpoint as ocp
  import jaxparams as jp
  hf = work / "hf"
  if (hf / "config.json").is_file():
    return hf
  lm = work / "lm"
  ckpts = lm / "checkpoints"
  if not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
    subprocess.run([sys.executable, "-m", "jaxparams.train", "--config=configs/prune_lm.py:dense",
                    f"--workdir={lm}", f"--config.num_steps={steps}",
                    f"--config.checkpoint_every={steps}"], check=True, cwd=ROOT)
  step = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  state = ocp.StandardCheckpointer().restore((ckpts / str(step) / "state").resolve())
  params = jax.tree.map(np.asarray, state["params"])
  cfg = jp.models.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=384,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=128, tie_word_embeddings=False)
  jp.models.to_hf(params, cfg, hf)
  (work / "trained_steps.txt").write_text(str(step))
  return hf


def windows(data: np.ndarray, n: int, seqlen: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  starts = rng.integers(0, len(data) - seqlen - 1, n)
  return np.stack([data[s:s + seqlen] for s in starts]).astype(np.int32)


def perplexity(folder: Path, ids: np.ndarray) -> float:
  import jax
  import jax.numpy as jnp
  import jaxparams as jp
  module, params, _ = jp.models.from_hf(folder)

  @jax.jit
  def nll(p, x):
    logits = module.apply({"params": p}, x).astype(jnp.float32)
    lp = jax.nn.log_softmax(logits[:, :-1], -1)
    return -jnp.take_along_axis(lp, x[:, 1:, None], -1).sum()

  tot = sum(float(nll(params, jnp.asarray(ids[i:i + 16]))) for i in range(0, len(ids), 16))
  return float(np.exp(tot / (ids.shape[0] * (ids.shape[1] - 1))))


def write(args, work, rows, secs, settings):
  steps = (work / "trained_steps.txt").read_text() if (work / "trained_steps.txt").exists() else "?"
  methods = [m for m in args.methods.split(",") if m]
  md = ["# Quantization perplexity on the small Llama LM", "",
        f"{datetime.date.today()}, {platform.machine()} CPU ({os.cpu_count()} cores shared with "
        "other engineers' jobs: times are noisy). Model: byte-level Llama of "
        f"`configs/prune_lm.py:dense` trained {steps} steps (459k parameters, 2 blocks, hidden "
        "128, GQA 4/2); 14 Linear kernels quantized by streaming `quantize_checkpoint`, "
        "embedding/head/norms float32. Perplexity (bytes) on "
        f"{args.eval_windows} x 128-byte windows of the held-out split; calibration "
        f"{args.nsamples} x {args.seqlen}-byte windows of the training split in batches of "
        f"{args.batch}. OmniQuant: LWC (AdamW lr 1e-2, wd 0, {args.epochs} epochs, 40 at W2 as "
        "the reference; `+let`: LET at lr 5e-3 too), one step per batch.", "",
        f"full precision: **{rows['fp32']:.3f}**", "",
        "| method | " + " | ".join(f"W{b} g{g}" for b, g in settings) + " |",
        "|---|" + "---|" * len(settings)]
  for m in methods:
    cells = []
    best = {s: min([rows[(mm, *s)] for mm in methods if (mm, *s) in rows] or [None])
            if any((mm, *s) in rows for mm in methods) else None for s in settings}
    for s in settings:
      v = rows.get((m, *s))
      cells.append("" if v is None else f"**{v:.3f}**" if v == best[s] else f"{v:.3f}")
    md.append(f"| {m} | " + " | ".join(cells) + " |")
  md += ["", "Quantization wall time (s, both blocks, incl. compiles):", "",
         "| method | " + " | ".join(f"W{b} g{g}" for b, g in settings) + " |",
         "|---|" + "---|" * len(settings)]
  for m in methods:
    md.append(f"| {m} | " + " | ".join(f"{secs[(m, *s)]:.1f}" if (m, *s) in secs else ""
                                       for s in settings) + " |")
  Path(args.out).write_text("\n".join(md) + "\n")
  Path(args.out).with_suffix(".json").write_text(json.dumps(
      {"fp32": rows["fp32"], "ppl": {f"{m}/w{b}g{g}": v for (m, b, g), v in
                                     ((k, v) for k, v in rows.items() if k != "fp32")},
       "seconds": {f"{m}/w{b}g{g}": v for (m, b, g), v in secs.items()}}, indent=1))
  return md


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--work", default="/tmp/jaxparams_quant_ppl")
  ap.add_argument("--steps", type=int, default=500, help="training steps (when not cached)")
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--settings", default=",".join(f"{b}:{g}" for b, g in SETTINGS))
  ap.add_argument("--nsamples", type=int, default=32)
  ap.add_argument("--seqlen", type=int, default=128)
  ap.add_argument("--batch", type=int, default=1, help="reference: batch 1")
  ap.add_argument("--epochs", type=int, default=20, help="OmniQuant epochs")
  ap.add_argument("--eval-windows", type=int, default=128)
  ap.add_argument("--out", default=str(ROOT / "benchmarks/results/quant_perplexity.md"))
  ap.add_argument("--merge", default="", help="comma-separated .json outputs of runs (e.g. one "
                  "per setting, run in parallel) to combine into --out instead of running")
  args = ap.parse_args()
  settings = [tuple(int(v) for v in s.split(":")) for s in args.settings.split(",")]
  if args.merge:
    rows, secs = {}, {}
    for f in args.merge.split(","):
      d = json.loads(Path(f).read_text())
      rows["fp32"] = d["fp32"]
      for key, v in d["ppl"].items():
        m, bg = key.split("/")
        b, g = bg[1:].split("g")
        rows[(m, int(b), int(g))] = v
        secs[(m, int(b), int(g))] = d["seconds"][key]
    print("\n".join(write(args, Path(args.work), rows, secs, settings)))
    return 0
  import jax
  from jaxparams.quant import stream
  from jaxparams.train import data as data_lib
  work = Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  hf = train_model(work, args.steps)
  corpus = data_lib.load_corpus(max_bytes=4_000_000, eval_percent=5)
  calib = windows(corpus.train, args.nsamples, args.seqlen, seed=2)
  batches = [{"input_ids": calib[i:i + args.batch]} for i in range(0, len(calib), args.batch)]
  ev = windows(corpus.eval, args.eval_windows, 128, seed=0)
  rows = {"fp32": perplexity(hf, ev)}
  print(f"fp32 ppl {rows['fp32']:.4f}", flush=True)
  secs = {}
  for bits, group in settings:
    for method in [m for m in args.methods.split(",") if m]:
      name, fields = _spec(method, bits, group)
      if name == "omniquant":
        fields["epochs"] = args.epochs * (2 if bits == 2 else 1)   # reference: 40 at W2
      q, d = work / f"q_{os.getpid()}", work / f"deq_{os.getpid()}"   # parallel runs apart
      t0 = time.perf_counter()
      stream.quantize_checkpoint(hf, q, [("**", (name, fields))], calibration=batches,
                                 overwrite=True)
      secs[(method, bits, group)] = time.perf_counter() - t0
      stream.dequantize_checkpoint(q, d, overwrite=True)
      rows[(method, bits, group)] = perplexity(d, ev)
      print(f"{method:14s} w{bits} g{group}: ppl {rows[(method, bits, group)]:.4f} "
            f"({secs[(method, bits, group)]:.1f} s)", flush=True)
      write(args, work, rows, secs, settings)
      jax.clear_caches()
  md = write(args, work, rows, secs, settings)
  print("\n".join(md))
  return 0


if __name__ == "__main__":
  sys.exit(main())
