"""GPTQ time for one layer: jaxparams (jit) vs the torch reference port vs qwix.

Run with the peer venv (torch CPU, qwix):
  /work/peer/bin/python benchmarks/gptq_vs_reference.py --size 4096 --out benchmarks/results/gptq.md

* ours: ``jaxparams.quant.gptq`` (4-bit, group 128, act-order, asymmetric), first call
  (trace + compile + run) and a second call (run only);
* torch: ``tests/fixtures/make_gptq_fixture.py:reference_gptq``, an independent torch
  port of IST-DASLab ``GPTQ.fasterquant`` (same column loop, blocksize 128), same
  weights and Hessian; also the code agreement and output-error ratio;
* qwix: ``qwix.contrib.gptq_core.quantize_weight`` (no act-order support: run with
  groups of 128 without act-order, eager), if qwix imports.

The weight is ``W[K, N]`` (K = N = size), inputs ``X[2*size, K]`` with correlated
channels; ``H = 2 X^T X / n``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import platform
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _map_kernels():
  """Without an install, map ``kernels/`` to ``jaxparams.kernels`` (as pyproject does)."""
  try:
    import jaxparams.kernels  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    return
  except ImportError:
    pass
  spec = importlib.util.spec_from_file_location(
      "jaxparams.kernels", ROOT / "kernels" / "__init__.py",
      submodule_search_locations=[str(ROOT / "kernels")])
  mod = importlib.util.module_from_spec(spec)
  sys.modules["jaxparams.kernels"] = mod
  spec.loader.exec_module(mod)


def _load_reference():
  spec = importlib.util.spec_from_file_location(
      "make_gptq_fixture", ROOT / "tests" / "fixtures" / "make_gptq_fixture.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.reference_gptq


def make_layer(size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  t = 2 * size
  x = rng.standard_normal((t, size), dtype=np.float32)
  x = x + 0.5 * np.roll(x, 1, axis=1)                   # correlated neighbours
  x[:, rng.choice(size, max(1, size // 128), replace=False)] *= 8.0
  w = (rng.standard_normal((size, size), dtype=np.float32) * 0.02)
  h = (2.0 / t) * (x.T @ x)
  return w, x, h.astype(np.float32)


class Timer:
  """Wall and process CPU time (all threads) of a block: the box is shared, so CPU seconds
  are the fairer comparison; wall seconds are what a user waits."""

  def __enter__(self):
    self.w0, self.c0 = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self.w0
    self.cpu = time.process_time() - self.c0


def out_err(x, w_hat, w):
  d = (w_hat - w).astype(np.float32)
  return float(np.sum((x @ d) ** 2))


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=4096)
  ap.add_argument("--group", type=int, default=128)
  ap.add_argument("--bits", type=int, default=4)
  ap.add_argument("--skip-torch", action="store_true")
  ap.add_argument("--skip-qwix", action="store_true")
  ap.add_argument("--qwix-size", type=int, default=None, help="size for qwix (default: --size)")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)

  import jax
  import jax.numpy as jnp
  _map_kernels()
  from jaxparams.quant.gptq import GPTQConfig, gptq

  rows = []
  w, x, h = make_layer(args.size)
  cfg = GPTQConfig(bits=args.bits, group_size=args.group, act_order=True)
  with Timer() as t_first:
    qa = gptq(jnp.asarray(w), jnp.asarray(h), cfg)
    jax.block_until_ready(qa.codes)
  with Timer() as t_run:
    qa = gptq(jnp.asarray(w), jnp.asarray(h), cfg)
    jax.block_until_ready(qa.codes)
  deq = np.asarray(qa.dequantize(jnp.float32))
  e_ours = out_err(x, deq, w)
  rows.append(("jaxparams gptq (jit, act-order, g%d)" % args.group, args.size, t_first, t_run))
  print(f"ours: first {t_first.wall:.2f}s, run {t_run.wall:.2f}s (cpu {t_run.cpu:.2f}s), "
        f"err {e_ours:.4g}", flush=True)

  agree = None
  if not args.skip_torch:
    import torch
    torch.set_num_threads(os.cpu_count() or 2)
    ref = _load_reference()
    with Timer() as t_torch:
      q, s, z, g = ref(torch.from_numpy(w.T.copy()), torch.from_numpy(h), bits=args.bits,
                       groupsize=args.group, actorder=True)
    q = q.numpy().T.astype(np.int32)
    s, z, g = s.numpy(), z.numpy(), g.numpy()
    deq_ref = (q - z[g]) * s[g]
    e_ref = out_err(x, deq_ref, w)
    mism = float(np.mean(np.asarray(qa.unpacked_codes()) != q))
    agree = (mism, e_ours / e_ref)
    rows.append(("torch reference port (eager, act-order, g%d)" % args.group, args.size, t_torch,
                 t_torch))
    print(f"torch: {t_torch.wall:.2f}s (cpu {t_torch.cpu:.2f}s), err {e_ref:.4g}, "
          f"code mismatch {mism:.2e}, "
          f"err ratio {e_ours / e_ref:.5f}", flush=True)

  if not args.skip_qwix:
    try:
      from qwix._src.core import qarray as qwix_qarray
      from qwix.contrib import gptq_core
    except Exception as e:  # pragma: no cover - depends on the venv
      print("qwix not available:", e)
    else:
      size = args.qwix_size or args.size
      wq, _, hq = (w, x, h) if size == args.size else make_layer(size)
      if size != args.size:
        with Timer() as t_sf:
          jax.block_until_ready(gptq(jnp.asarray(wq), jnp.asarray(hq), cfg).codes)
        with Timer() as t_s:
          jax.block_until_ready(gptq(jnp.asarray(wq), jnp.asarray(hq), cfg).codes)
        rows.append(("jaxparams gptq (jit, act-order, g%d)" % args.group, size, t_sf, t_s))
      how = qwix_qarray.HowToQuantize(qtype=jnp.int4, channelwise_axes=[0],
                                      tiled_axes={1: args.group}, calibration_method="absmax")
      with Timer() as t_qwix:
        qq, _ = gptq_core.quantize_weight(jnp.asarray(wq.T), jnp.asarray(hq), how)
        jax.block_until_ready(qq.qvalue)
      rows.append(("qwix 0.1.8 gptq_core (eager, no act-order, symmetric absmax: its "
                   "asymmetric path fails, g%d)" % args.group, size, t_qwix, t_qwix))
      print(f"qwix eager: {t_qwix.wall:.2f}s (cpu {t_qwix.cpu:.2f}s) at {size}", flush=True)

  lines = [
      "## GPTQ time for one layer (CPU)",
      "",
      f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
      f"(shared with other jobs), jax {jax.__version__}. {args.bits}-bit, group {args.group}, "
      f"asymmetric; W[{args.size}, {args.size}], H from {2 * args.size} correlated inputs.",
      "",
      "| implementation | size | first call: wall s (CPU s) | warm call: wall s (CPU s) |",
      "|---|---|---|---|",
  ]
  for name, size, a, b in rows:
    lines.append(f"| {name} | {size}x{size} | {a.wall:.2f} ({a.cpu:.2f}) | "
                 f"{b.wall:.2f} ({b.cpu:.2f}) |")
  lines += ["", "CPU s = process CPU time over all threads (the box runs other jobs, so wall "
            "time is inflated by sharing); the torch port and qwix have no separate compile step, "
            "so both columns show the same run. qwix's GPTQ is a Python loop over columns with "
            "eager jax ops, so it is timed at a smaller size."]
  if agree:
    lines += ["", f"Agreement with the torch reference port on the same W and H: code mismatch "
              f"{agree[0]:.2e} of weights, output-error ratio ours/ref = {agree[1]:.5f}."]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
