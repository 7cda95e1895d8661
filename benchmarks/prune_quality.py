"""Pruning quality on a real model: all-MiniLM-L6-v2 sentence embeddings vs the dense model.

Every Linear kernel of the six encoder layers (36 matrices; embeddings, norms, biases and the
pooler stay dense) is pruned by magnitude (one threshold per matrix, the reference repos'
baseline), Wanda and SparseGPT, at 50% unstructured and 2:4, and 2:4 SparseGPT with joint 4-bit
quantization (per-row min-max grid, as the reference's ``--wbits 4``). Quality = cosine of each
sentence's embedding to the dense model's (mean and min). Calibration: Python docstring sentences;
evaluation: scikit-learn dataset descriptions (disjoint text). Calibrated methods are sequential
(each block's statistics are collected after the blocks before it are pruned).

Run:  python benchmarks/prune_quality.py [--calib 128] [--eval 128]
Writes benchmarks/results/prune_quality.md (and .json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = (("50%", {"sparsity": 0.5}), ("2:4", {"pattern": "2:4"}))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--calib", type=int, default=128)
  ap.add_argument("--eval", type=int, default=128)
  args = ap.parse_args(argv)
  import jax

  import jaxparams as jp
  from jaxparams import calib
  model = jp.models.load_minilm()
  module, params, config, tok = model
  evals = calib.sklearn_sentences(args.eval)
  batches = calib.text_batches(tok, calib.docstring_sentences(args.calib), batch_size=32,
                               max_length=128, token_type_ids=True)
  ref = jp.models.embed(evals, model=model)
  rows = []

  def score(label, setting, pruned, seconds, report):
    emb = jp.models.embed(evals, model=(module, pruned, config, tok))
    cos = np.sum(emb * ref, -1)
    rows.append({"method": label, "setting": setting, "mean_cos": float(cos.mean()),
                 "min_cos": float(cos.min()), "seconds": seconds,
                 "sparsity": float(np.mean(list(report.values())))})
    print(rows[-1], flush=True)

  for setting, fields in SETTINGS:
    t = time.time()
    pruned, rep = jp.prune.prune_tree(params, "magnitude", **fields)
    score("magnitude", setting, pruned, time.time() - t, rep)
    for method in ("wanda", "sparsegpt"):
      t = time.time()
      pruned, rep = jp.prune.prune_model(module, params, batches, method, **fields)
      score(method, setting, pruned, time.time() - t, rep)
  t = time.time()
  pruned, rep = jp.prune.prune_model(module, params, batches, "sparsegpt", pattern="2:4", bits=4)
  score("sparsegpt + 4-bit (joint)", "2:4", pruned, time.time() - t, rep)

  out = {"machine": f"{platform.machine()}, {jax.device_count()} CPU device(s)",
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "jax": jax.__version__, "calib_sentences": args.calib, "eval_sentences": len(evals),
         "rows": rows}
  res = ROOT / "benchmarks" / "results"
  res.mkdir(parents=True, exist_ok=True)
  (res / "prune_quality.json").write_text(json.dumps(out, indent=1))
  md = ["## Pruning quality on all-MiniLM-L6-v2 (`prune_quality.py`)", "",
        f"Measured {out['date']} on {out['machine']} (shared with other jobs), jax {out['jax']}. "
        f"36 Linear kernels pruned; cosine of sentence embeddings to the dense model on "
        f"{len(evals)} held-out sentences; {args.calib} calibration sentences.", "",
        "| method | pattern | mean cosine | min cosine | achieved sparsity | seconds |",
        "|---|---|---:|---:|---:|---:|"]
  md += [f"| {r['method']} | {r['setting']} | {r['mean_cos']:.4f} | {r['min_cos']:.4f} | "
         f"{r['sparsity']:.3f} | {r['seconds']:.1f} |" for r in rows]
  md += ["", "Papers' ordering on LLaMA-7B at 50% (WikiText perplexity): dense 5.68, magnitude "
         "17.3, Wanda 7.26, SparseGPT 7.22."]
  (res / "prune_quality.md").write_text("\n".join(md) + "\n")
  print("\n".join(md))
  return 0


if __name__ == "__main__":
  sys.exit(main())
