"""Benchmark of the dequant-matmul kernels against the bf16 XLA dot.

On an NVIDIA Hopper GPU (the Mosaic GPU kernel needs sm_90):
    pip install -e . --no-deps   # or run from the repo root; a sys.path shim is below
    python benchmarks/dequant_matmul.py                 # full table
    python benchmarks/dequant_matmul.py --quick         # 4096x4096 only
For each weight (4096x4096 and 8192x8192; 4-bit g128 asymmetric and 8-bit per-channel)
it first checks the kernel against the jnp reference, then times, at batch 1, 4, 16,
64 and 256: the Pallas kernel, the XLA path (reference: dequant fused by XLA) and a
plain bf16 ``x @ w`` (the weight already in bf16), and prints a markdown table with
the device name and the ratios bf16_time / kernel_time (>1 means the kernel wins).
Times are GPU kernel times from Mosaic GPU's CUPTI profiler when available (median of
the iterations), else wall clock around ``block_until_ready``.

On a TPU the same script times the Mosaic TPU kernel. On CPU, ``--smoke`` runs tiny
shapes through the TPU kernel in interpret mode (and the GPU kernel through jax's
GPU interpreter) against the reference: a check that the script itself works.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

try:
  import jaxparams.kernels.dequant_matmul  # noqa: F401  (installed package)
except ImportError:  # running from a bare checkout: map jaxparams.kernels -> kernels/
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import kernels as _kernels
  import jaxparams
  sys.modules["jaxparams.kernels"] = _kernels
  jaxparams.kernels = _kernels

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.kernels.dequant_matmul import api, reference

BATCHES = (1, 4, 16, 64, 256)
CONFIGS = (("w4 g128", 4, 128, True), ("w8 per-channel", 8, None, True))


def make(k, n, bits, group, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  g = k if group is None else group
  codes = jax.random.bits(ks[0], (k // (32 // bits), n), jnp.uint32)
  scale = jax.random.uniform(ks[1], (k // g, n), minval=0.5, maxval=1.5) / 2**bits / 8
  zero = jax.random.uniform(ks[2], (k // g, n), maxval=2**bits - 1)
  return codes, scale, zero, g


def timeit(fn, *args, iterations=50):
  """Median milliseconds of ``fn(*args)``: CUPTI kernel time on GPU, else wall clock."""
  out = jax.block_until_ready(fn(*args))  # compile + warm up
  if jax.default_backend() == "gpu":
    try:
      from jax.experimental.mosaic.gpu import profiler
      _, times = profiler.measure(fn, iterations=iterations)(*args)
      if times:
        return statistics.median(times), out
    except Exception as e:  # noqa: BLE001 - fall back to wall clock
      print(f"(CUPTI profiler unavailable: {type(e).__name__}: {e}; using wall clock)")
  ts = []
  for _ in range(iterations):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append((time.perf_counter() - t) * 1e3)
  return statistics.median(ts), out


def rel_err(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def run_device(sizes, batches, iterations):
  dev = jax.devices()[0]
  name = f"{dev.platform}: {getattr(dev, 'device_kind', dev)}"
  print(f"# dequant_matmul benchmark on {name}, jax {jax.__version__}\n")
  rows = []
  for size in sizes:
    k = n = size
    for label, bits, group, with_zero in CONFIGS:
      codes, scale, zero, g = make(k, n, bits, group)
      zero = zero if with_zero else None
      w_bf16 = reference.dequantize(codes, scale, zero, bits=bits, group_size=g,
                                    dtype=jnp.bfloat16)
      kern = jax.jit(lambda x, c, s, z: api.dequant_matmul(
          x, c, s, z, bits=bits, group_size=g, implementation="pallas"))
      xla = jax.jit(lambda x, c, s, z: api.dequant_matmul(
          x, c, s, z, bits=bits, group_size=g, implementation="xla"))
      dense = jax.jit(lambda x, w: x @ w)
      for m in batches:
        x = jax.random.normal(jax.random.key(m), (m, k)).astype(jnp.bfloat16)
        try:
          t_k, y_k = timeit(kern, x, codes, scale, zero, iterations=iterations)
        except Exception as e:  # noqa: BLE001 - report and keep going
          print(f"{size} {label} M={m}: kernel failed: {type(e).__name__}: {str(e)[:300]}")
          t_k, y_k = float("nan"), None
        t_x, y_x = timeit(xla, x, codes, scale, zero, iterations=iterations)
        t_d, _ = timeit(dense, x, w_bf16, iterations=iterations)
        err = rel_err(y_k, y_x) if y_k is not None else float("nan")
        rows.append((f"{k}x{n}", label, m, t_k, t_x, t_d, err))
        print(f"{k}x{n} {label} M={m}: kernel {t_k * 1e3:.1f} us, xla {t_x * 1e3:.1f} us, "
              f"bf16 {t_d * 1e3:.1f} us, rel err {err:.1e}", flush=True)
  print(f"\n## {name}\n")
  print("| weight | quant | batch | kernel (us) | XLA dequant+dot (us) | bf16 dot (us) | "
        "bf16/kernel | bf16/XLA | kernel rel err |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
  for shape, label, m, t_k, t_x, t_d, err in rows:
    print(f"| {shape} | {label} | {m} | {t_k * 1e3:.1f} | {t_x * 1e3:.1f} | {t_d * 1e3:.1f} | "
          f"{t_d / t_k:.2f}x | {t_d / t_x:.2f}x | {err:.1e} |")


def run_smoke():
  from jax.experimental.pallas import tpu as pltpu
  from jaxparams.kernels.dequant_matmul import pallas_gpu, pallas_tpu
  print(f"# smoke run on {jax.default_backend()} (interpret mode), jax {jax.__version__}")
  for bits, group in ((4, 128), (8, None)):
    k, n, m = 512, 128, 4
    codes, scale, zero, g = make(k, n, bits, group)
    x = jax.random.normal(jax.random.key(1), (m, k)).astype(jnp.bfloat16)
    ref = reference.dequant_matmul_reference(x, codes, scale, zero, bits=bits, group_size=g)
    t = time.perf_counter()
    y = pallas_tpu.dequant_matmul_tpu(x, codes, scale, zero, bits=bits, group_size=g,
                                      interpret=pltpu.InterpretParams(detect_races=True))
    print(f"TPU kernel (interpret) w{bits} g{g}: rel err {rel_err(y, ref):.1e}, "
          f"{time.perf_counter() - t:.2f} s")
    try:
      from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
      t = time.perf_counter()
      y = pallas_gpu.dequant_matmul_gpu(x, codes[:, :64], scale[:, :64], zero[:, :64],
                                        bits=bits, group_size=g, interpret=InterpretGPUParams())
      ref64 = reference.dequant_matmul_reference(
          x, codes[:, :64], scale[:, :64], zero[:, :64], bits=bits, group_size=g)
      print(f"GPU kernel (jax GPU interpreter) w{bits} g{g}: rel err {rel_err(y, ref64):.1e}, "
            f"{time.perf_counter() - t:.2f} s")
    except Exception as e:  # noqa: BLE001
      print(f"GPU interpreter unavailable: {type(e).__name__}: {str(e)[:200]}")
    for platform in ("tpu", "cuda"):
      impl = "pallas_tpu" if platform == "tpu" else "pallas_gpu"
      kk = 1024
      c2, s2, z2, g2 = make(kk, 256, bits, group)
      x2 = jnp.zeros((16, kk), jnp.bfloat16)
      f = jax.jit(lambda x, c, s, z: api.dequant_matmul(x, c, s, z, bits=bits, group_size=g2,
                                                        implementation=impl))
      text = jax.export.export(f, platforms=[platform])(x2, c2, s2, z2).mlir_module()
      print(f"export platforms=[{platform!r}] w{bits}: ok, {len(text)} chars of MLIR")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--smoke", action="store_true", help="tiny CPU run in interpret mode")
  ap.add_argument("--quick", action="store_true", help="only 4096x4096")
  ap.add_argument("--iterations", type=int, default=50)
  args = ap.parse_args()
  if args.smoke or jax.default_backend() == "cpu":
    run_smoke()
    return
  run_device((4096,) if args.quick else (4096, 8192), BATCHES, args.iterations)


if __name__ == "__main__":
  main()
