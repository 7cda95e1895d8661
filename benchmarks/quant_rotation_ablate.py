"""Where a weight-only MiniLM row of ``quant_rotation.py`` loses: restore-one-part ablations.

Quantizes all-MiniLM-L6-v2 once with one weight-only row (``--row``, the syntax of
``quant_rotation.py --rows``; same calibration / held-out sentences and protocol), then
evaluates the mean / min cosine to full precision with one part restored to its
full-precision weights: each block (``layers_i``: its six Linears), each Linear kind (the same
Linear in all six blocks). The gain from restoring a part is what quantizing it costs
(to first order). Also prints, per Linear, the relative output error
``|X (W~ - W)| / |X W|`` on the calibration inputs of the full-precision model.

Run:  python benchmarks/quant_rotation_ablate.py --row autoround:4:128:0:hadamard \
        --out benchmarks/results/quant_rotation_ablate.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quant_rotation import _cpu, _fields, _parse, autoround_blockwise, minilm_setup  # pylint: disable=g-import-not-at-top,wrong-import-position


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--row", required=True, help="one weight-only row spec (act_bits 0)")
  ap.add_argument("--calib", type=int, default=190)
  ap.add_argument("--eval", type=int, default=256)
  ap.add_argument("--xla-cache", default="")
  ap.add_argument("--out", required=True, help="JSON file the ablation is appended to")
  args = ap.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # pylint: disable=g-import-not-at-top
  import jax
  if args.xla_cache:
    jax.config.update("jax_compilation_cache_dir", args.xla_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  from jaxparams import tree as jtree
  from jaxparams.calib.capture import as_call, capture_inputs
  from jaxparams.demo.quant_minilm import embed_cosines
  from jaxparams.quant.outliers import OutlierConfig, quantize_outliers
  from jaxparams.quant.rotate import to_stock
  row = _parse(args.row)
  if row["act_bits"]:
    raise SystemExit("weight-only rows only (act_bits 0)")
  model, _, evals, ref, batches = minilm_setup(args)
  module, params = model[0], model[1]
  t0, c0 = time.perf_counter(), _cpu()
  if row["method"] == "autoround-block":
    stock, _ = autoround_blockwise(module, params, batches, row)
  else:
    cfg = OutlierConfig(rotate=row["rotate"], smooth=row["smooth"], act_bits=0)
    res = quantize_outliers(module, params, [("**/kernel", (row["method"], _fields(row)))],
                            batches, cfg)
    stock = to_stock(res.params)
  stock = jax.tree.map(lambda a: np.asarray(a, np.float32), stock)
  secs, cpu = time.perf_counter() - t0, _cpu() - c0
  fp = jtree.flatten(params)
  q = jtree.flatten(stock)
  kernels = sorted(p for p in fp if p.endswith("/kernel") and p.startswith("layers_")
                   and not np.array_equal(np.asarray(fp[p]), q[p]))

  def cos_with(restored):
    cur = dict(q)
    cur.update({p: fp[p] for p in restored})
    _, c = embed_cosines(model, jtree.unflatten(cur), evals, ref)
    return float(c.mean()), float(c.min())

  out = {"row": args.row, "quantize_seconds": secs, "quantize_cpu_seconds": cpu,
         "all": cos_with([])}
  blocks = sorted({p.split("/", 1)[0] for p in kernels})
  kinds = sorted({p.split("/", 1)[1] for p in kernels})
  out["restore_block"] = {b: cos_with([p for p in kernels if p.startswith(b + "/")])
                          for b in blocks}
  out["restore_kind"] = {k: cos_with([p for p in kernels if p.endswith("/" + k)])
                         for k in kinds}
  # per-Linear relative output error on the full-precision model's calibration inputs
  a, kw = as_call(batches[0])
  xs = capture_inputs(module, params, *a, paths=kernels, **kw)   # padding rows dropped
  err = {}
  for p in kernels:
    x = np.asarray(xs[p], np.float64)
    w = np.asarray(fp[p], np.float64)
    err[p] = float(np.linalg.norm(x @ (q[p] - w)) / np.linalg.norm(x @ w))
  out["rel_out_err"] = err
  out["wall_seconds_total"] = time.perf_counter() - t0
  path = Path(args.out)
  rows = json.loads(path.read_text()) if path.is_file() else []
  rows.append(out)
  path.write_text(json.dumps(rows, indent=1))
  print(json.dumps({k: v for k, v in out.items() if k != "rel_out_err"}, indent=1))
  by_kind = {k: np.mean([e for p, e in err.items() if p.endswith("/" + k)]) for k in kinds}
  print("mean rel. output error per kind:", {k: round(v, 4) for k, v in by_kind.items()})
  return 0


if __name__ == "__main__":
  sys.exit(main())
