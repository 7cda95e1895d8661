"""Where GPTQ / decoupleQ time goes on CPU (issue 15): whole MiniLM and one matrix.

Two modes (each prints one JSON line; results are written up by hand in
``benchmarks/results/quant_speed.md`` because the box is shared and each mode runs as
separate fresh processes):

* ``whole CACHE SPEC...``: all 36 Linear kernels of all-MiniLM-L6-v2 quantized by
  ``quantize_tree`` with calibration statistics captured once (190 stdlib docstring
  sentences, as ``quant_quality.py``); SPEC = ``method:bits:group``. ``CACHE`` is
  the persistent compilation cache folder (``none``: off); run twice with the same
  folder for cold / warm. Reports wall, process CPU seconds (all threads) and
  compile seconds (``jax.monitoring``: trace + lower + XLA compile or cache load).
* ``layer K N``: decoupleQ's jitted core on one ``W[K, N]`` (2-bit, group 64) with the
  default schedule (4 alternations x 50 FISTA steps) and with parts switched off
  (``pgd_iters=0``, ``outer_iters=1``), first call (compile + run) and second call
  (run), wall and CPU seconds: the FISTA steps' share and FLOP rate.

Usage::

  python benchmarks/quant_speed.py whole /tmp/qcache decoupleq:2:64 gptq:4:128
  python benchmarks/quant_speed.py layer 384 1536
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

T0, C0 = time.perf_counter(), time.process_time()

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.monitoring  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

COMPILE = ("/jax/core/compile/jaxpr_trace_duration",
           "/jax/core/compile/jaxpr_to_mlir_module_duration",
           "/jax/core/compile/backend_compile_duration",
           "/jax/compilation_cache/cache_retrieval_time_sec")


def whole(cache: str, specs: list[str]) -> dict:
  # pylint: disable=import-outside-toplevel
  from jaxparams.calib import corpus
  from jaxparams.cli.common import enable_compile_cache
  from jaxparams.models.minilm import load_minilm
  from jaxparams.quant import rules as qrules
  from jaxparams.quant.calibrate import collect_stats, text_batches
  events: dict[str, float] = {}
  jax.monitoring.register_event_duration_secs_listener(
      lambda e, d, **_: events.__setitem__(e, events.get(e, 0.0) + d))
  if cache != "none":
    enable_compile_cache(cache)
  out = {"startup": (time.perf_counter() - T0, time.process_time() - C0)}
  module, params, _, tok = load_minilm()
  calib = sorted(corpus.docstring_sentences(190), key=len)
  batches = text_batches(tok, calib, batch_size=64, max_length=64)
  t, c = time.perf_counter(), time.process_time()
  stats = collect_stats(module, params, batches)
  jax.block_until_ready(jax.tree_util.tree_leaves(stats))
  out["stats"] = (time.perf_counter() - t, time.process_time() - c)
  for spec in specs:
    method, bits, group = spec.split(":")
    fields = {"bits": int(bits), "group_size": int(group)}
    if method == "gptq":
      fields["act_order"] = True
    events.clear()
    t, c = time.perf_counter(), time.process_time()
    q, _ = qrules.quantize_tree(params, [("**/kernel", (method, fields))], calibration=stats)
    jax.block_until_ready(jax.tree_util.tree_leaves(q))
    out[spec] = dict(wall=time.perf_counter() - t, cpu=time.process_time() - c,
                     compile_wall=sum(events.get(e, 0.0) for e in COMPILE))
  return out


def layer(k: int, n: int) -> dict:
  # pylint: disable-next=import-outside-toplevel
  from jaxparams.quant.decoupleq import DecoupleQConfig, _decoupleq_jit
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2048, k)).astype(np.float32)
  w = jax.numpy.asarray(rng.standard_normal((k, n)).astype(np.float32) * 0.05)
  h = jax.numpy.asarray(2 * x.T @ x / 2048)
  g, ng, chunk = 64, k // 64, n
  while chunk > 1 and k * ng * chunk > (1 << 24) and chunk % 2 == 0:
    chunk //= 2
  base = DecoupleQConfig(bits=2, group_size=64, block_size=min(128, k))
  out = {}
  for label, cfg in (("default", base),
                     ("pgd_iters=0", dataclasses.replace(base, pgd_iters=0)),
                     ("outer_iters=1", dataclasses.replace(base, outer_iters=1)),
                     ("outer_iters=1,pgd_iters=0",
                      dataclasses.replace(base, outer_iters=1, pgd_iters=0))):
    row = []
    for _ in range(2):
      t, c = time.perf_counter(), time.process_time()
      jax.block_until_ready(_decoupleq_jit(w, h, cfg=cfg, group=g, chunk=chunk))
      row.append((time.perf_counter() - t, time.process_time() - c))
    out[label] = {"first": row[0], "second": row[1]}
  fista_cpu = out["default"]["second"][1] - out["pgd_iters=0"]["second"][1]
  flops = base.outer_iters * base.pgd_iters * 2.0 * k * k * n
  out["fista_gflop"] = flops / 1e9
  out["fista_gflop_per_cpu_s"] = flops / 1e9 / max(fista_cpu, 1e-9)
  return out


if __name__ == "__main__":
  if sys.argv[1] == "whole":
    print(json.dumps(whole(sys.argv[2], sys.argv[3:])))
  else:
    print(json.dumps(layer(int(sys.argv[2]), int(sys.argv[3]))))
