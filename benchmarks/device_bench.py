"""Kernel and merge speed on the default device against issue 15's targets.

    python benchmarks/device_bench.py [--out FILE] [--dry-run] [--only dequant,merge_kernel,merge]

Three measurements, each printed as a markdown table with the target and a verdict:

1. **W4A16 dequant-matmul vs the bf16 XLA dot**, 8192x8192 (4-bit, g128, zero points) at batch
   1, 4, 16, 64 (targets: >= 3.5x at 1-16, >= 1.5x at 64; Marlin's published ratios), with the
   XLA dequantize+dot path beside it, and one padded-edge shape (Llama-2-7B's down_proj,
   K = 11008) to show what edge padding costs.
2. **Fused TIES / DARE merge kernel vs the device's copy bandwidth** (target >= 85%): the copy is
   a jitted ``x * s`` over the same bytes (read + write); the kernel's bytes are its minimum
   traffic (base + N models read once, the output written once); thresholds are computed before
   and not timed. On a GPU the tile size is swept (the merge kernels' tile is a tuning knob).
3. **Merge of a generated Llama-shaped set on the device vs host-to-device transfer**: base + 2
   models with Qwen2-0.5B's shapes (494M parameters each, bf16), ``jp.merge.merge_trees`` for
   ``ties`` and ``task_arithmetic`` on device arrays (compile time apart) against the time of
   ``jax.device_put`` of the three trees (target: the merge takes no longer than the transfer).

Times: CUPTI kernel time on a GPU (see ``device_common.gpu_ms``), else wall clock. ``--dry-run``
(or a CPU backend) runs tiny sizes with the TPU kernels interpreted, to check the script itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from device_common import Report, device_line, gpu_ms, import_jaxparams, rel_err  # noqa: E402

jp = import_jaxparams()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxparams.merge  # noqa: E402,F401
from jaxparams.kernels.dequant_matmul import api as dq_api  # noqa: E402
from jaxparams.kernels.dequant_matmul import reference as dq_ref  # noqa: E402
from jaxparams.kernels.merge_sparsify import api as ms_api  # noqa: E402
from jaxparams.kernels.merge_sparsify import pallas as ms_pallas  # noqa: E402

PARTS = ("dequant", "merge_kernel", "merge")


# --------------------------------------------------------------------------- 1. dequant-matmul
def bench_dequant(report: Report, dry: bool, iterations: int) -> None:
  report("#### W4A16 dequant-matmul (4-bit, g128, zero points) vs bf16 XLA dot\n")
  if dry:
    shapes, batches = [(512, 256)], (1,)
  else:
    shapes, batches = [(8192, 8192)], (1, 4, 16, 64)
  report("| K x N | batch | kernel (us) | XLA dequant+dot (us) | bf16 dot (us) | bf16/kernel | "
         "target | verdict | kernel rel err |")
  report("|---|---:|---:|---:|---:|---:|---:|---|---:|")
  failed = 0
  extra = [] if dry else [((11008, 4096), (1, 16))]  # padded edge: K = 11008 = 21.5 x 512
  for (k, n), bs in [(s, batches) for s in shapes] + extra:
    rng = np.random.default_rng(0)
    codes = jnp.asarray(rng.integers(0, 2**32, (k // 8, n), dtype=np.uint32))
    scale = jnp.asarray(rng.uniform(0.5, 1.5, (k // 128, n)) / 128, jnp.float32)
    zero = jnp.asarray(rng.uniform(0, 15, (k // 128, n)), jnp.float32)
    w = dq_ref.dequantize(codes, scale, zero, bits=4, group_size=128, dtype=jnp.bfloat16)
    kern = jax.jit(lambda x, c, s, z: dq_api.dequant_matmul(x, c, s, z, bits=4, group_size=128,
                                                            implementation="pallas"))
    xla = jax.jit(lambda x, c, s, z: dq_api.dequant_matmul(x, c, s, z, bits=4, group_size=128,
                                                           implementation="xla"))
    dense = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32
                                         ).astype(x.dtype))
    for m in bs:
      x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
      try:
        t_k = gpu_ms(kern, x, codes, scale, zero, iterations=iterations)
        err = rel_err(jnp.asarray(kern(x, codes, scale, zero), jnp.float32),
                      jnp.asarray(xla(x, codes, scale, zero), jnp.float32))
      except Exception as e:  # noqa: BLE001
        traceback.print_exc(limit=3)
        report(f"| {k}x{n} | {m} | error: {type(e).__name__}: {str(e)[:120]} | | | | | FAIL | |")
        failed += 1
        continue
      t_x = gpu_ms(xla, x, codes, scale, zero, iterations=iterations)
      t_d = gpu_ms(dense, x, w, iterations=iterations)
      target = 3.5 if m <= 16 else 1.5
      ratio = t_d / t_k
      shape_note = "" if (k, n) in shapes else " (padded K)"
      report(f"| {k}x{n}{shape_note} | {m} | {t_k * 1e3:.1f} | {t_x * 1e3:.1f} | "
             f"{t_d * 1e3:.1f} | {ratio:.2f}x | {target}x | "
             f"{'met' if ratio >= target else 'not met'} | {err:.1e} |")
  report()
  return failed


# --------------------------------------------------------------------------- 2. merge kernel
def bench_merge_kernel(report: Report, dry: bool, iterations: int) -> None:
  n = 1 << (14 if dry else 25)  # 32M float32 per tensor on a device
  n_models = 3
  report(f"#### Fused TIES / DARE merge kernel vs device copy bandwidth ({n_models} models, "
         f"{n:,} float32 each)\n")
  rng = np.random.default_rng(1)
  base = jnp.asarray(rng.standard_normal(n, dtype=np.float32))
  models = base + 0.01 * jnp.asarray(rng.standard_normal((n_models, n), dtype=np.float32))
  big = jnp.concatenate([base, models.reshape(-1)])  # same bytes as the merge's inputs
  scale = jnp.float32(1.0001)
  copy = jax.jit(lambda a, s: a * s)
  t_copy = gpu_ms(copy, big, scale, iterations=iterations)
  bw_copy = 2 * big.nbytes / (t_copy * 1e-3) / 1e9
  report(f"Copy (`x * s`, read + write {2 * big.nbytes / 1e9:.2f} GB): {t_copy:.3f} ms = "
         f"**{bw_copy:.0f} GB/s**\n")
  lo, lo_cut = ms_api.topk_cuts(models - base, jnp.full((n_models,), n // 5), implementation="xla")
  common = dict(weights=jnp.array([1.0, 0.6, 0.8]), hi=jnp.full((n_models,), ms_api.KEY_MAX),
                lam=1.0)
  modes = {
      "ties (top 20%, sign election)": dict(lo=lo, lo_cut=lo_cut),
      "dare_ties (p=0.5, no rescale)": dict(lo=jnp.zeros((n_models,), jnp.uint32),
                                            p=jnp.full((n_models,), 0.5),
                                            seeds=jnp.arange(n_models, dtype=jnp.uint32)),
      "dare_ties (p=0.5, L1 rescale: 2 passes)": dict(
          lo=jnp.zeros((n_models,), jnp.uint32), p=jnp.full((n_models,), 0.5),
          seeds=jnp.arange(n_models, dtype=jnp.uint32), rescale="l1"),
  }
  min_bytes = (n_models + 2) * n * 4
  backend = jax.default_backend()
  targets = {"gpu": ms_pallas.GPU, "tpu": ms_pallas.TPU}.get(backend, ms_pallas.TPU)
  rows_list = (16, 64, 256) if backend == "gpu" else (64, 256, 512)
  if dry:
    rows_list = rows_list[:1]
  interpret = backend == "cpu"
  failed = 0
  report("| mode | implementation | tile (rows x 128) | ms | GB/s (minimum bytes) | "
         "of copy bw | target | verdict | rel err vs XLA |")
  report("|---|---|---:|---:|---:|---:|---:|---|---:|")
  for label, kw in list(modes.items())[:1 if dry else None]:
    xla = jax.jit(lambda b, m, kw=kw: ms_api.sparsify_merge(b, m, implementation="xla", **kw,
                                                            **common))
    ref = xla(base, models)
    t = gpu_ms(xla, base, models, iterations=iterations)
    bw = min_bytes / (t * 1e-3) / 1e9
    report(f"| {label} | xla | - | {t:.3f} | {bw:.0f} | {bw / bw_copy:.0%} | - | - | 0 |")
    for rows in rows_list:
      tgt = dataclasses.replace(targets, tile_elems=rows * 128)
      fused = jax.jit(lambda b, m, kw=kw, tgt=tgt: ms_pallas.sparsify_merge(
          b, m, target=tgt, interpret=interpret, **kw, **common))
      try:
        err = rel_err(fused(base, models), ref)
        t = gpu_ms(fused, base, models, iterations=iterations)
      except Exception as e:  # noqa: BLE001
        traceback.print_exc(limit=3)
        report(f"| {label} | pallas | {rows} | error: {type(e).__name__}: {str(e)[:100]} | | | "
               f"85% | FAIL | |")
        failed += 1
        continue
      bw = min_bytes / (t * 1e-3) / 1e9
      report(f"| {label} | pallas | {rows} | {t:.3f} | {bw:.0f} | {bw / bw_copy:.0%} | 85% | "
             f"{'met' if bw >= 0.85 * bw_copy else 'not met'} | {err:.1e} |")
  report()
  return failed


# --------------------------------------------------------------------------- 3. merge on device
def llama_shapes(dry: bool) -> dict[str, tuple[int, ...]]:
  """Qwen2-0.5B's parameter shapes (494M), or a tiny Llama for the dry run."""
  h, ffn, layers, vocab, kv = (64, 128, 2, 256, 32) if dry else (896, 4864, 24, 151936, 128)
  shapes = {"embed": (vocab, h), "norm": (h,)}
  for i in range(layers):
    p = f"layers/{i}/"
    shapes.update({p + "q": (h, h), p + "k": (h, kv), p + "v": (h, kv), p + "o": (h, h),
                   p + "gate": (h, ffn), p + "up": (h, ffn), p + "down": (ffn, h),
                   p + "norm1": (h,), p + "norm2": (h,)})
  return shapes


def make_host_set(shapes, n_models: int = 3, seed: int = 0):
  """``n_models`` host trees (numpy bf16): a base and fine-tunes that differ by small deltas."""
  import ml_dtypes
  rng = np.random.default_rng(seed)
  pool = rng.standard_normal(1 << 22, dtype=np.float32)  # sliced and scaled: fast generation
  trees = [{} for _ in range(n_models)]
  for t, (name, shape) in enumerate(shapes.items()):
    size = int(np.prod(shape))
    base = np.resize(np.roll(pool, 7919 * t), size) * np.float32(0.02)  # np.resize repeats
    trees[0][name] = base.astype(ml_dtypes.bfloat16).reshape(shape)
    for j in range(1, n_models):
      delta = np.resize(np.roll(pool, 104729 * (t + 1) * j), size) * np.float32(0.002)
      trees[j][name] = (base + delta).astype(ml_dtypes.bfloat16).reshape(shape)
  return trees


def bench_merge(report: Report, dry: bool, iterations: int) -> None:
  shapes = llama_shapes(dry)
  n_params = sum(int(np.prod(s)) for s in shapes.values())
  t = time.perf_counter()
  host = make_host_set(shapes)
  t_gen = time.perf_counter() - t
  nbytes = sum(a.nbytes for tree in host for a in tree.values())
  report(f"#### Merge of a generated Llama-shaped set on the device vs host-to-device transfer\n")
  report(f"Base + 2 models, {n_params / 1e6:.0f}M parameters each (Qwen2-0.5B shapes"
         f"{', tiny for the dry run' if dry else ''}), bf16: {nbytes / 1e9:.2f} GB on the host "
         f"(generated in {t_gen:.1f} s).\n")
  dev = jax.devices()[0]
  h2d = []
  for _ in range(3):
    t = time.perf_counter()
    trees = jax.block_until_ready([jax.device_put(tree, dev) for tree in host])
    h2d.append(time.perf_counter() - t)
  t_h2d = min(h2d)
  report(f"Host-to-device transfer of the three trees: {t_h2d * 1e3:.1f} ms = "
         f"**{nbytes / t_h2d / 1e9:.1f} GB/s** (best of 3)\n")
  report("| method | implementation | first call (compile incl.) s | merge ms (median) | "
         "merge / transfer | target | verdict |")
  report("|---|---|---:|---:|---:|---:|---|")
  base, models = trees[0], trees[1:]
  failed = 0
  methods = (("ties", {"density": 0.2}), ("task_arithmetic", {}))
  for method, mp in methods[1:] if dry else methods:  # dry: skip ties' 20 s CPU compile
    for impl in (None, "xla"):
      if method == "task_arithmetic" and impl == "xla":
        continue  # no kernel option: one row
      def run(base=base, models=models, method=method, mp=mp, impl=impl):
        return jaxparams.merge.merge_trees(method, base, models,
                                           model_params={"weight": [1.0, 0.5], **mp},
                                           implementation=impl)
      try:
        t = time.perf_counter()
        jax.block_until_ready(run())
        first = time.perf_counter() - t
        times = []
        for _ in range(max(2, iterations // 10)):
          t = time.perf_counter()
          jax.block_until_ready(run())
          times.append(time.perf_counter() - t)
        t_m = float(np.median(times))
      except Exception as e:  # noqa: BLE001
        traceback.print_exc(limit=3)
        report(f"| {method} | {impl} | error: {type(e).__name__}: {str(e)[:120]} | | | | FAIL |")
        failed += 1
        continue
      ratio = t_m / t_h2d
      report(f"| {method} | {impl or 'default'} | {first:.1f} | {t_m * 1e3:.1f} | {ratio:.2f} | "
             f"<= 1 | {'met' if ratio <= 1 else 'not met'} |")
  report()
  return failed


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", help="markdown file to append the tables to")
  ap.add_argument("--dry-run", action="store_true", help="tiny sizes (CPU: kernels interpreted)")
  ap.add_argument("--iterations", type=int, default=30)
  ap.add_argument("--only", default=",".join(PARTS), help=f"comma list of {PARTS}")
  args = ap.parse_args(argv)
  parts = [p for p in args.only.split(",") if p]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    ap.error(f"unknown part(s) {unknown}; valid: {list(PARTS)}")
  dry = args.dry_run or jax.default_backend() == "cpu"
  iterations = 2 if dry else args.iterations
  report = Report(args.out)
  report(f"### Speed on the device{' (dry run: sizes and times mean nothing)' if dry else ''}\n")
  report(f"{device_line()}\n")
  fails = 0
  try:
    for part, fn in (("dequant", bench_dequant), ("merge_kernel", bench_merge_kernel),
                     ("merge", bench_merge)):
      if part in parts:
        try:
          fails += fn(report, dry, iterations)
        except Exception as e:  # noqa: BLE001 - one part failing must not hide the others
          fails += 1
          traceback.print_exc()
          report(f"\n{part}: error {type(e).__name__}: {str(e)[:300]}\n")
  finally:
    report(f"{fails} benchmark row(s) or part(s) failed.\n")
    report.write()
  return 1 if fails else 0


if __name__ == "__main__":
  sys.exit(main())
