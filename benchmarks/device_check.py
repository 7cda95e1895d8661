"""Every Pallas kernel against its jnp reference, run on the default device (issue 15).

    python benchmarks/device_check.py [--out FILE] [--dry-run]

On a Hopper GPU or a TPU this runs the compiled kernels (``implementation='pallas'``, no
interpret mode): the dequant-matmul over every distinct layer shape of
``jaxparams.kernels.dequant_matmul.coverage.MODEL_LAYERS`` (MiniLM, BERT, Qwen2-0.5B, Llama-2/3;
w4 g128 at 1 token, plus per-channel, g32, 8-bit and several M tiles on the shapes whose K/N need
edge padding), and the fused merge kernels (k-th largest key, tie cuts, the TIES / breadcrumbs /
DARE / DELLA fused merge) on tensors with partial tiles. On CPU (``--dry-run``, or no
accelerator) the same code runs on small shapes with the TPU kernels interpreted: a check that the
script works. Prints a markdown table, appends it to ``--out`` and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from device_common import Report, device_line, import_jaxparams, rel_err  # noqa: E402

import_jaxparams()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxparams.kernels.dequant_matmul import api as dq_api  # noqa: E402
from jaxparams.kernels.dequant_matmul import coverage, reference as dq_ref  # noqa: E402
from jaxparams.kernels.merge_sparsify import api as ms_api  # noqa: E402
from jaxparams.kernels.merge_sparsify import reference as ms_ref  # noqa: E402

BF16_TOL, F32_TOL, MERGE_TOL = 1e-2, 2e-5, 2e-6


def dequant_cases(dry: bool) -> list[tuple[int, int, int, int, int, str]]:
  """``(m, k, n, bits, group, dtype)``."""
  if dry:
    return [(3, 384, 96, 4, 128, "bfloat16")]
  shapes = sorted({s for layers in coverage.MODEL_LAYERS.values() for s in layers})
  cases = [(1, k, n, 4, 128, "bfloat16") for k, n in shapes]
  edges = [(384, 1536), (1536, 384), (768, 30522), (896, 128), (4864, 896), (11008, 4096)]
  for k, n in edges:
    cases += [(1, k, n, 4, k, "bfloat16"), (16, k, n, 4, 32, "bfloat16"),
              (40, k, n, 8, 64, "bfloat16"), (100, k, n, 8, k, "bfloat16")]
  cases += [(64, 8192, 8192, 4, 128, "bfloat16"), (256, 4096, 4096, 4, 128, "bfloat16")]
  if jax.default_backend() == "tpu":
    cases += [(8, 4096, 4096, 4, 128, "float32"), (8, 11008, 4096, 8, 11008, "float32")]
  return cases


def make_dequant(m, k, n, bits, g, dtype, seed=0):
  rng = np.random.default_rng(seed)
  p = 32 // bits
  codes = jnp.asarray(rng.integers(0, 2**32, (k // p, n), dtype=np.uint32))
  scale = jnp.asarray(rng.uniform(0.5, 1.5, (k // g, n)) / 2**bits / 8, jnp.float32)
  zero = jnp.asarray(rng.uniform(0, 2**bits - 1, (k // g, n)), jnp.float32)
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32).astype(dtype)
  return x, codes, scale, zero


def check_dequant(report: Report, dry: bool) -> int:
  fails = 0
  target = "gpu" if jax.default_backend() == "gpu" else "tpu"
  for m, k, n, bits, g, dtype in dequant_cases(dry):
    label = f"dequant_matmul w{bits} g{'K' if g == k else g} {dtype} M={m} K={k} N={n}"
    kind, why = coverage.status(k, n, bits=bits, group_size=g, target=target, m=m, dtype=dtype)
    t = time.perf_counter()
    try:
      x, codes, scale, zero = make_dequant(m, k, n, bits, g, dtype, seed=m + k)
      if kind != "pallas":
        raise ValueError(f"planner refuses: {why}")
      run = jax.jit(lambda x, c, s, z: dq_api.dequant_matmul(
          x, c, s, z, bits=bits, group_size=g, implementation="pallas"))
      ref = jax.jit(lambda x, c, s, z: dq_ref.dequant_matmul_reference(
          x, c, s, z, bits=bits, group_size=g))
      err = rel_err(jnp.asarray(run(x, codes, scale, zero), jnp.float32),
                    jnp.asarray(ref(x, codes, scale, zero), jnp.float32))
      tol = BF16_TOL if dtype == "bfloat16" else F32_TOL
      ok = err <= tol
      note = f"{err:.1e}"
    except Exception as e:  # noqa: BLE001 - record and go on with the other checks
      ok, tol, note = False, float("nan"), f"error: {type(e).__name__}: {str(e)[:160]}"
      traceback.print_exc(limit=3)
    fails += not ok
    report(f"| {label} | {note} | {tol:.0e} | {'ok' if ok else 'FAIL'} | "
           f"{time.perf_counter() - t:.1f} |")
  return fails


def merge_case(mode: str, n: int, rng):
  base = jnp.asarray(rng.standard_normal(n), jnp.float32)
  models = base + jnp.round(4 * jnp.asarray(rng.standard_normal((3, n)), jnp.float32)) / 40
  deltas = models - base
  kw = dict(weights=jnp.array([0.9, 0.4, -0.6]), lam=0.8)
  lo, lo_cut = ms_api.topk_cuts(deltas, jnp.array([max(1, n // 2)] * 3), implementation="xla")
  hi = jnp.full((3,), ms_api.KEY_MAX)
  seeds = jnp.array([3, 5, 7], jnp.uint32)
  if mode == "ties":
    kw.update(lo=lo, hi=hi, lo_cut=lo_cut)
  elif mode == "breadcrumbs_l1":
    hi, hi_cut = ms_api.topk_cuts(deltas, jnp.array([max(1, n // 20)] * 3), implementation="xla")
    kw.update(lo=lo, hi=hi, lo_cut=lo_cut, hi_cut=hi_cut, rescale="l1", consensus=False)
  elif mode == "dare_ties_l1":
    kw.update(lo=jnp.zeros((3,), jnp.uint32), hi=hi, p=jnp.array([0.3, 0.5, 0.8]), seeds=seeds,
              rescale="l1")
  else:  # della_inverse
    p = jnp.stack([ms_ref.della_probabilities(d, 0.5, 0.2) for d in deltas])
    kw.update(lo=jnp.zeros((3,), jnp.uint32), hi=hi, p=p, seeds=seeds, rescale="inverse",
              consensus=False, normalize=False)
  return base, models, kw


def check_merge(report: Report, dry: bool) -> int:
  fails = 0
  rng = np.random.default_rng(5)
  sizes = (2100,) if dry else (1_000_003, 4096 * 4096)
  for n in sizes:
    checks = []
    keys = ms_ref.magnitude_bits(jnp.asarray(rng.standard_normal((3, n)), jnp.float32))
    k = jnp.array([1, n // 3, n])
    checks.append((f"k-th largest key n={n}",
                   lambda keys=keys, k=k: ms_api.key_thresholds(keys, k, implementation="pallas"),
                   lambda keys=keys, k=k: jax.vmap(ms_ref.kth_largest_key)(keys, k), True))
    dup = jnp.asarray(rng.integers(-5, 6, size=(2, n)), jnp.float32)  # many exact ties
    kk = jnp.array([n // 7, n // 2])
    if not dry:
        checks.append((f"top-k threshold + tie cut n={n}",
                     lambda dup=dup, kk=kk: jnp.stack(ms_api.topk_cuts(dup, kk,
                                                                       implementation="pallas")),
                     lambda dup=dup, kk=kk: jnp.stack(ms_api.topk_cuts(dup, kk,
                                                                       implementation="xla")),
                     True))
    modes = ("ties", "breadcrumbs_l1", "dare_ties_l1", "della_inverse")
    for mode in modes[:1] if dry else modes:
      base, models, kw = merge_case(mode, n, rng)
      checks.append((f"sparsify_merge {mode} n={n}",
                     lambda b=base, m=models, kw=kw: ms_api.sparsify_merge(
                         b, m, implementation="pallas", **kw),
                     lambda b=base, m=models, kw=kw: ms_api.sparsify_merge(
                         b, m, implementation="xla", **kw), False))
    for label, run, ref, exact in checks:
      t = time.perf_counter()
      try:
        got, want = np.asarray(run()), np.asarray(ref())
        if exact:
          ok = got.shape == want.shape and bool(np.array_equal(got, want))
          note = "equal" if ok else f"{int(np.sum(got != want))} differ"
        else:
          err = rel_err(got, want)
          ok, note = err <= MERGE_TOL, f"{err:.1e}"
      except Exception as e:  # noqa: BLE001
        ok, note = False, f"error: {type(e).__name__}: {str(e)[:160]}"
        traceback.print_exc(limit=3)
      fails += not ok
      report(f"| {label} | {note} | {'exact' if exact else f'{MERGE_TOL:.0e}'} | "
             f"{'ok' if ok else 'FAIL'} | {time.perf_counter() - t:.1f} |")
  return fails


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", help="markdown file to append the table to")
  ap.add_argument("--dry-run", action="store_true", help="small shapes (CPU: TPU kernels "
                  "interpreted)")
  args = ap.parse_args(argv)
  dry = args.dry_run or jax.default_backend() == "cpu"
  report = Report(args.out)
  report(f"### Kernels vs references on the device{' (dry run)' if dry else ''}\n")
  report(f"{device_line()}; implementation='pallas'"
         f"{' (CPU: the TPU kernels in interpret mode)' if jax.default_backend() == 'cpu' else ''}\n")
  report("| check | max rel err / result | tolerance | verdict | seconds (compile incl.) |")
  report("|---|---|---|---|---:|")
  fails = 0
  try:
    fails += check_dequant(report, dry)
    fails += check_merge(report, dry)
  finally:
    report(f"\n{fails} check(s) failed.\n")
    report.write()
  return 1 if fails else 0


if __name__ == "__main__":
  sys.exit(main())
