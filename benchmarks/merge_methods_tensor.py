"""Per-tensor speed and agreement of jaxparams' merge methods vs mergekit 0.1.5.

One (R, C) float32 tensor, a base and 3 fine-tuned-like models; each method is
timed in jaxparams (registry ``merge_tensor``, warm jit cache; the first call's
compile time is reported separately) and in mergekit (``merge_tensors``, run
in the torch venv as a subprocess), and the outputs are compared (max abs
difference relative to max |output|; random methods use different RNGs and are
not compared).

  python benchmarks/merge_methods_tensor.py [--rows 4096 --cols 4096]
  (needs /work/peer/bin/python with mergekit for the mergekit columns)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

CASES = [
    ("linear", {"weight": [0.3, 0.3, 0.4]}, {}),
    ("task_arithmetic", {"weight": [0.3, 0.3, 0.4]}, {}),
    ("ties", {"weight": [1.0, 0.5, 0.8], "density": [0.5, 0.5, 0.5]}, {}),
    ("breadcrumbs_ties", {"weight": [1.0, 0.5, 0.8], "density": [0.5, 0.5, 0.5]}, {}),
    ("dare_ties", {"weight": [1.0, 0.5, 0.8], "density": [0.5, 0.5, 0.5]}, {}),
    ("della", {"weight": [1.0, 0.5, 0.8], "density": [0.5, 0.5, 0.5]}, {}),
    ("slerp", {}, {"t": 0.4}),
    ("model_stock", {}, {}),
]
RANDOM = {"dare_ties", "della"}

PEER_SCRIPT = r"""
import json, sys, time, numpy as np, torch
from mergekit.merge_methods import merge_tensors
torch.set_num_threads(int(sys.argv[3]))
d = np.load(sys.argv[1]); cases = json.loads(open(sys.argv[2]).read())
xs = [torch.from_numpy(d[k]) for k in ("base", "m0", "m1", "m2")]
res = {}
for name, mp, gp in cases:
    inputs = xs[:2] if name == "slerp" else (xs[1:] if name == "linear" else xs)
    off, bidx = (0, None) if name == "linear" else (1, 0)
    params = dict(gp)
    for k, v in mp.items():
        params[k] = {i + off: x for i, x in enumerate(v)}
    best = 1e9
    for _ in range(2):
        t = time.perf_counter(); out = merge_tensors(inputs, name, base_index=bidx, parameters=params)
        best = min(best, time.perf_counter() - t)
    np.save(sys.argv[1] + "." + name + ".npy", out.numpy())
    res[name] = best
print(json.dumps(res))
"""


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rows", type=int, default=4096)
  ap.add_argument("--cols", type=int, default=4096)
  ap.add_argument("--peer", default="/work/peer/bin/python")
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--out", default=None, help="write the markdown table here")
  args = ap.parse_args()

  import jax
  from jaxparams.merge import get_method, tensor_key

  rng = np.random.default_rng(0)
  shape = (args.rows, args.cols)
  base = rng.standard_normal(shape, dtype=np.float32)
  models = [base + 0.01 * rng.standard_normal(shape, dtype=np.float32) for _ in range(3)]

  ours = {}
  outs = {}
  for name, mp, gp in CASES:
    m = get_method(name)
    ms = models[:1] if name == "slerp" else models
    key = tensor_key(jax.random.key(0), "w")
    t = time.perf_counter()
    out = m.merge_tensor(base, ms, model_params=mp, global_params=gp, key=key, name="w")
    out.block_until_ready()
    first = time.perf_counter() - t
    best = 1e9
    for _ in range(3):
      t = time.perf_counter()
      out = m.merge_tensor(base, ms, model_params=mp, global_params=gp, key=key, name="w")
      out.block_until_ready()
      best = min(best, time.perf_counter() - t)
    ours[name] = (first, best)
    outs[name] = np.asarray(out)

  theirs = {}
  if os.path.exists(args.peer):
    with tempfile.TemporaryDirectory() as tmp:
      npz = os.path.join(tmp, "x.npz")
      np.savez(npz, base=base, m0=models[0], m1=models[1], m2=models[2])
      cj = os.path.join(tmp, "cases.json")
      with open(cj, "w") as f:
        json.dump(CASES, f)
      r = subprocess.run([args.peer, "-c", PEER_SCRIPT, npz, cj, str(args.threads)],
                         capture_output=True, text=True)
      if r.returncode:
        raise RuntimeError(f"mergekit run failed:\n{r.stderr[-3000:]}")
      theirs = json.loads(r.stdout.strip().splitlines()[-1])
      for name, _, _ in CASES:
        ref = np.load(f"{npz}.{name}.npy")
        diff = np.abs(outs[name].astype(np.float64) - ref)
        theirs[name] = (theirs[name], float(diff.max() / np.abs(ref).max()),
                        int((diff > 1e-6 * np.abs(ref).max()).sum()))

  lines = [f"Per-tensor merge, one {shape[0]}x{shape[1]} fp32 tensor, base + 3 models "
           f"({jax.default_backend()}, {os.cpu_count()} cores visible, torch threads "
           f"{args.threads})", "",
           "| method | jaxparams warm (s) | jaxparams first call incl. compile (s) | "
           "mergekit 0.1.5 (s) | speed-up | max rel diff | elements differing |",
           "|---|---|---|---|---|---|---|"]
  for name, _, _ in CASES:
    first, best = ours[name]
    if name in theirs:
      tk, rel, nbad = theirs[name]
      rnd = name in RANDOM
      lines.append(f"| {name} | {best:.3f} | {first:.2f} | {tk:.3f} | {tk / best:.1f}x | "
                   f"{'(random)' if rnd else f'{rel:.1e}'} | {'-' if rnd else nbad} |")
    else:
      lines.append(f"| {name} | {best:.3f} | {first:.2f} | - | - | - | - |")
  text = "\n".join(lines)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  sys.exit(main())
