"""OmniQuant on all-MiniLM-L6-v2: mean/min cosine of sentence embeddings to full precision.

Same model, calibration and evaluation sentences as ``benchmarks/quant_quality.py``, but
the quantization runs through the streaming ``quantize_checkpoint`` (block by block: the
block-wise OmniQuant form, trained on each block's output), then the folder is dequantized
and embedded. BERT blocks are post-norm, so LET has no exact fold there: LWC only. RTN and
GPTQ through the same streaming path are measured in the same run as references.

Run:  python benchmarks/quant_omniquant_minilm.py [--settings 4g128,2g64] [--epochs 20]
Prints a markdown table (pasted into benchmarks/results/quant_perplexity.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--settings", default="4g128,3g64,2g64")
  ap.add_argument("--methods", default="rtn,gptq,omniquant")
  ap.add_argument("--epochs", type=int, default=20)
  ap.add_argument("--calib", type=int, default=190)
  ap.add_argument("--eval", type=int, default=256)
  args = ap.parse_args()
  import jax
  import jaxparams as jp
  from jaxparams.calib import corpus
  from jaxparams.demo.quant_minilm import embed_cosines
  from jaxparams.models.minilm import load_minilm, minilm_path
  from jaxparams.quant import stream
  model = load_minilm()
  calib = corpus.docstring_sentences(args.calib)
  evals = corpus.sklearn_sentences() + corpus.reference_sentences()
  evals = [s for s in evals if s not in set(calib)][:args.eval]
  ref, _ = embed_cosines(model, model[1], evals)
  calib = sorted(calib, key=len)
  lines = ["| method | setting | mean cos | min cos | seconds |", "|---|---|---|---|---|"]
  tmp = Path(tempfile.mkdtemp())
  for s in args.settings.split(","):
    bits, group = (int(v) for v in s.split("g"))
    for m in args.methods.split(","):
      f = {"bits": bits, "group_size": group}
      if m == "omniquant":
        f["epochs"] = args.epochs * (2 if bits == 2 else 1)
      t0 = time.perf_counter()
      stream.quantize_checkpoint(minilm_path(), tmp / "q", [("**/kernel", (m, f))],
                                 calibration=calib, max_length=64, batch_size=16,
                                 overwrite=True)
      secs = time.perf_counter() - t0
      stream.dequantize_checkpoint(tmp / "q", tmp / "d", overwrite=True)
      _, params, _ = jp.models.from_hf(tmp / "d")
      _, cos = embed_cosines(model, params, evals, ref)
      lines.append(f"| {m} | {bits}-bit g{group} | {cos.mean():.4f} | {cos.min():.4f} | "
                   f"{secs:.0f} |")
      print(lines[-1], flush=True)
      jax.clear_caches()
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
