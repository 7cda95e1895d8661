"""Per-call cost of one-tensor merges (registry ``merge_tensor`` and tree API), median of many.

Small tensors, so the time is the Python/dispatch overhead around the jitted math (what the
transform layer adds or removes), not the math. Works on the code before and after the
transform-layer refactor (public API only), so both can be run on the same machine:

  .venv/bin/python benchmarks/merge_tensor_overhead.py [--reps 50] [--out results/x.md]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

CASES = [
    ("linear", {"weight": [0.3, 0.3, 0.4]}, {}),
    ("task_arithmetic", {"weight": [0.3, 0.3, 0.4]}, {}),
    ("ties", {"weight": [1.0, 0.5, 0.8], "density": [0.5, 0.5, 0.5]}, {}),
    ("dare_ties", {"weight": [1.0, 0.5, 0.8], "density": [0.5, 0.5, 0.5]}, {}),
    ("slerp", {}, {"t": 0.4}),
    ("model_stock", {}, {}),
]


def _median(fn, reps):
  fn()  # compile
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--reps", type=int, default=50)
  ap.add_argument("--sizes", default="64,512")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  from jaxparams.merge import get_method, merge_trees, tensor_key
  rows = []
  for size in [int(s) for s in args.sizes.split(",")]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((size, size), dtype=np.float32)
    models = [base + 0.01 * rng.standard_normal(base.shape, dtype=np.float32) for _ in range(3)]
    jb = jax.device_put(base)
    jm = [jax.device_put(m) for m in models]
    key = tensor_key(jax.random.key(0), "w")
    for name, mp, gp in CASES:
      m = get_method(name)
      ms = jm[:1] if name == "slerp" else jm
      b = None if m.base_policy == "ignored" else jb
      t1 = _median(lambda: m.merge_tensor(b, ms, model_params=mp, global_params=gp, key=key,
                                          name="w"), args.reps)
      trees = [{"a": x, "b": x} for x in ms]
      t2 = _median(lambda: merge_trees(name, None if b is None else {"a": b, "b": b}, trees,
                                       model_params=mp, global_params=gp,
                                       key=jax.random.key(0)), args.reps)
      rows.append((size, name, t1 * 1e6, t2 / 2 * 1e6))
  lines = [f"Median per call ({args.reps} reps), {jax.default_backend()}, fp32, base + 3 models",
           "", "| size | method | merge_tensor (us) | merge_trees per leaf (us) |",
           "|---|---|---|---|"]
  lines += [f"| {s}x{s} | {n} | {a:.0f} | {b:.0f} |" for s, n, a, b in rows]
  text = "\n".join(lines)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
