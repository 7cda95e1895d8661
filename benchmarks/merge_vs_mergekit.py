"""jaxparams merge vs mergekit 0.1.5: same YAML, same checkpoints; time, peak RSS, agreement.

Builds Llama checkpoints (a base and two "fine-tunes" = base + noise) in HF
safetensors format, runs each recipe through ``mergekit-yaml`` (its own venv,
torch CPU) and through ``python -m jaxparams.cli.merge`` (both as fresh
processes under ``/usr/bin/time -v``: wall time and peak RSS include start-up),
then compares every output tensor (max abs diff; max relative diff = max|a-b| /
max|mergekit|).

Two sets:
* ``bf16``: three Llama checkpoints of ``--size`` (``large`` ~0.54B params, the
  issue's setting; ``medium`` ~0.17B; ``mid`` 42M; ``small`` 5M), dtype bfloat16:
  task_arithmetic, slerp, ties (density 0.5), linear; with the I/O floor (read and
  write bandwidth measured in the same run), start-up and compile seconds apart
  (``merge_child.py``), and, with ``JAXPARAMS_BEFORE=<older checkout>``, the older
  jaxparams timed in the same run.
* ``fp32``: a small fp32 set (5M params) through every deterministic method;
  they must agree to <= 1e-6 relative.

Usage:
  python benchmarks/merge_vs_mergekit.py --size medium --work /tmp/mbench \
      --out benchmarks/results/merge.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxparams.io import open_checkpoint
from jaxparams.demo.tiny_llama import llama_config, write_llama

MERGEKIT = os.environ.get("MERGEKIT_YAML") or next(
    (p for p in ("/work/peer/bin/mergekit-yaml", "/work/torchvenv/bin/mergekit-yaml")
     if os.path.exists(p)), "mergekit-yaml")
CHILD = Path(__file__).resolve().parent / "merge_child.py"
BEFORE = os.environ.get("JAXPARAMS_BEFORE")  # an older checkout to time in the same run

SIZES = {
    "large": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                  num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16),
    "medium": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                   num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16),
    "mid": dict(vocab_size=16000, hidden_size=512, intermediate_size=1408,
                num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8),
    "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
}

# Recipes: {name: (yaml body with {base}/{a}/{b}, deterministic?)}
BIG = {
    "task_arithmetic": ("merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                        "  - model: {a}\n    parameters: {{weight: 0.5}}\n"
                        "  - model: {b}\n    parameters: {{weight: 0.5}}\n", True),
    "slerp": ("merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n"
              "  - model: {a}\nparameters: {{t: 0.35}}\n", True),
    "ties": ("merge_method: ties\nbase_model: {base}\nmodels:\n"
             "  - model: {a}\n    parameters: {{weight: 0.6, density: 0.5}}\n"
             "  - model: {b}\n    parameters: {{weight: 0.4, density: 0.5}}\n"
             "parameters: {{normalize: true}}\n", True),
    "linear": ("merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.3}}\n"
               "  - model: {b}\n    parameters: {{weight: 0.7}}\n", True),
}
SMALL = dict(BIG)
SMALL.update({
    "slerp_gradient": ("merge_method: slerp\nbase_model: {base}\nslices:\n  - sources:\n"
                       "      - model: {base}\n        layer_range: [0, 4]\n"
                       "      - model: {a}\n        layer_range: [0, 4]\nparameters:\n  t:\n"
                       "    - filter: self_attn\n      value: [0, 0.5, 1]\n"
                       "    - filter: mlp\n      value: [1, 0.5, 0]\n    - value: 0.5\n", True),
    "nuslerp": ("merge_method: nuslerp\nbase_model: {base}\nmodels:\n"
                "  - model: {a}\n    parameters: {{weight: 0.4}}\n"
                "  - model: {b}\n    parameters: {{weight: 0.6}}\n", True),
    "multislerp": ("merge_method: multislerp\nbase_model: {base}\nmodels:\n"
                   "  - model: {a}\n    parameters: {{weight: 0.4}}\n"
                   "  - model: {b}\n    parameters: {{weight: 0.6}}\n", True),
    "karcher": ("merge_method: karcher\nmodels:\n  - model: {a}\n  - model: {b}\n", True),
    "breadcrumbs_ties": ("merge_method: breadcrumbs_ties\nbase_model: {base}\nmodels:\n"
                         "  - model: {a}\n    parameters: {{weight: 0.5, density: 0.6, "
                         "gamma: 0.05}}\n"
                         "  - model: {b}\n    parameters: {{weight: 0.5, density: 0.6, "
                         "gamma: 0.05}}\n", True),
    "sce": ("merge_method: sce\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n"
            "parameters: {{select_topk: 0.5}}\n", True),
    "ram": ("merge_method: ram\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n",
            True),
    "model_stock": ("merge_method: model_stock\nbase_model: {base}\nmodels:\n  - model: {a}\n"
                    "  - model: {b}\n", True),
    "nearswap": ("merge_method: nearswap\nbase_model: {base}\nmodels:\n  - model: {base}\n"
                 "  - model: {a}\nparameters: {{t: 0.001}}\n", True),
    "dare_ties": ("merge_method: dare_ties\nbase_model: {base}\nmodels:\n"
                  "  - model: {a}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
                  "  - model: {b}\n    parameters: {{weight: 0.5, density: 0.5}}\n", False),
})


def build(root: Path, size: str, dtype: str, noise: float) -> dict[str, str]:
  cfg = llama_config(**SIZES[size], dtype=dtype)
  paths = {k: root / f"{size}-{dtype}-{k}" for k in ("base", "a", "b")}
  if not all((p / "config.json").is_file() for p in paths.values()):
    for p in paths.values():
      shutil.rmtree(p, ignore_errors=True)
    f32 = root / f"{size}-f32tmp"
    shutil.rmtree(f32, ignore_errors=True)
    write_llama(f32, cfg=dict(cfg, torch_dtype="float32"), seed=0)
    write_llama(paths["base"], like=f32, dtype=dtype)
    write_llama(paths["a"], like=f32, noise=noise, seed=1, dtype=dtype)
    write_llama(paths["b"], like=f32, noise=noise, seed=2, dtype=dtype)
    shutil.rmtree(f32)
  n = sum(int(np.prod(s.shape)) for s in map(open_checkpoint(paths["base"]).spec,
                                             open_checkpoint(paths["base"]).names()))
  return {k: str(v) for k, v in paths.items()} | {"params": n}


def timed(cmd: list[str], env=None, keep_stdout: bool = False) -> tuple[float, float, Any]:
  """Runs under /usr/bin/time -v: (wall seconds, peak RSS GB, stderr (stdout, stderr))."""
  t0 = time.perf_counter()
  p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
  wall = time.perf_counter() - t0
  m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
  rss = int(m.group(1)) / 1e6 if m else float("nan")
  if p.returncode != 0:
    raise RuntimeError(f"{cmd[0]} failed ({p.returncode}):\n{p.stdout[-2000:]}\n"
                       f"{p.stderr[-3000:]}")
  cpu = sum(float(v) for v in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)",
                                          p.stderr))
  LAST_CPU[0] = cpu
  return wall, rss, ((p.stdout, p.stderr) if keep_stdout else p.stderr)


LAST_CPU = [0.0]  # user + system seconds of the last timed() process


def compare(ours: Path, theirs: Path) -> tuple[float, float, int]:
  with open_checkpoint(ours) as a, open_checkpoint(theirs) as b:
    na, nb = set(a.names()), set(b.names())
    if na != nb:
      raise RuntimeError(f"tensor sets differ: only ours {sorted(na - nb)[:3]}, only mergekit "
                         f"{sorted(nb - na)[:3]}")
    max_abs = max_rel = 0.0
    for n in sorted(na):
      x = np.asarray(a.read(n), np.float64)
      y = np.asarray(b.read(n), np.float64)
      if x.shape != y.shape:
        raise RuntimeError(f"{n}: shape {x.shape} vs mergekit {y.shape}")
      d = float(np.max(np.abs(x - y))) if x.size else 0.0
      max_abs = max(max_abs, d)
      max_rel = max(max_rel, d / max(float(np.max(np.abs(y))), 1e-30))
    return max_abs, max_rel, len(na)


def slerp_referee(models: dict, ours: Path, theirs: Path, t: float) -> dict:
  """Max abs distance of each output from slerp evaluated in float64 (mergekit's formula)."""
  out = {"jaxparams": 0.0, "mergekit": 0.0}
  with open_checkpoint(models["base"]) as b, open_checkpoint(models["a"]) as a, \
      open_checkpoint(ours) as x, open_checkpoint(theirs) as y:
    for n in b.names():
      v0 = np.asarray(b.read(n), np.float64).ravel()
      v1 = np.asarray(a.read(n), np.float64).ravel()
      n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
      c = float(np.clip(np.dot(v0 / (n0 if n0 > 1e-8 else 1), v1 / (n1 if n1 > 1e-8 else 1)),
                        -1, 1))
      if abs(c) > 0.9995:
        ref = (1 - t) * v0 + t * v1
      else:
        om = np.arccos(c)
        ref = np.sin((1 - t) * om) / np.sin(om) * v0 + np.sin(t * om) / np.sin(om) * v1
      for k, ck in (("jaxparams", x), ("mergekit", y)):
        got = np.asarray(ck.read(n), np.float64).ravel()
        out[k] = max(out[k], float(np.max(np.abs(got - ref))))
  return out


def model_bytes(folder: str) -> int:
  return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def io_bandwidth(folders: list[str], out_bytes: int, work: Path) -> dict:
  """Sequential read of the input files and write of a file of the output's size, now.

  Both through the same path the merges use (the page cache: dropping it needs root
  rights this box does not give, so inputs are read as warm as the merges read them;
  the write is not fsynced, as neither tool fsyncs). Returns GB/s both ways.
  """
  buf = bytearray(1 << 24)
  view = memoryview(buf)
  t0 = time.perf_counter()
  n_in = 0
  for d in folders:
    for f in sorted(Path(d).glob("*.safetensors")):
      with open(f, "rb", buffering=0) as fh:
        while True:
          got = fh.readinto(view)
          if not got:
            break
          n_in += got
  t_read = time.perf_counter() - t0
  probe = work / "io-probe.bin"
  data = np.random.default_rng(0).integers(0, 255, len(buf), np.uint8).tobytes()
  t0 = time.perf_counter()
  with open(probe, "wb", buffering=0) as fh:
    left = out_bytes
    while left > 0:
      left -= fh.write(data[:min(left, len(data))])
  t_write = time.perf_counter() - t0
  probe.unlink()
  return {"read_gbs": n_in / t_read / 1e9, "write_gbs": out_bytes / t_write / 1e9,
          "read_bytes": n_in, "read_s": t_read, "write_s": t_write}


def startup_rss() -> tuple[float, float]:
  """(seconds, peak RSS GB) of a fresh process that only imports jax and the merge modules."""
  wall, rss, _ = timed([sys.executable, "-c", "import jax, jaxparams.cli.main, "
                        "jaxparams.merge.stream"], env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return wall, rss


def largest_tensor(folder: str) -> int:
  with open_checkpoint(folder) as r:
    return max(r.spec(n).nbytes for n in r.names())


def run_one(work: Path, tag: str, name: str, body: str, models: dict, dtype: str,
            warm_run: bool = False, floor: bool = False) -> dict:
  rdir = work / "recipes"
  rdir.mkdir(exist_ok=True, parents=True)
  recipe = rdir / f"{tag}-{name}.yml"
  recipe.write_text(body.format(**models) + f"dtype: {dtype}\n")
  out_mk, out_jp = work / f"out-{tag}-{name}-mergekit", work / f"out-{tag}-{name}-jaxparams"
  for o in (out_mk, out_jp):
    shutil.rmtree(o, ignore_errors=True)
  used = [models[k] for k in ("base", "a", "b") if "{" + k + "}" in body]
  in_bytes = sum(model_bytes(m) for m in used)
  out_bytes = model_bytes(models["base"])
  io = io_bandwidth(used, out_bytes, work) if floor else None
  mk_wall, mk_rss, _ = timed([MERGEKIT, str(recipe), str(out_mk), "--no-copy-tokenizer",
                              "--quiet", "--random-seed", "0", "--out-shard-size", "5B"])
  mk_cpu = LAST_CPU[0]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cache = work / f"xla-cache-{tag}-{name}"
  shutil.rmtree(cache, ignore_errors=True)  # cold: an empty persistent compilation cache
  cmd = [sys.executable, str(CHILD), str(recipe), str(out_jp), "--quiet",
         "--no-copy-tokenizer", "--compile-cache", str(cache)]
  jp_wall, jp_rss, _, child = timed_child(cmd, env)
  jp_cpu = LAST_CPU[0]
  warm = warm_child = None
  if warm_run:  # again, with the kernels compiled by the first run in the cache
    shutil.rmtree(out_jp)
    warm, _, _, warm_child = timed_child(cmd, env)
  shutil.rmtree(cache, ignore_errors=True)
  before = None
  if BEFORE:  # the same two runs with an older checkout of jaxparams first on PYTHONPATH
    benv = dict(env, PYTHONPATH=BEFORE)
    out_b = work / f"out-{tag}-{name}-before"
    bcmd = [sys.executable, str(CHILD), str(recipe), str(out_b), "--quiet",
            "--no-copy-tokenizer", "--compile-cache", str(cache)]
    shutil.rmtree(out_b, ignore_errors=True)
    b_wall, b_rss, _, b_child = timed_child(bcmd, benv)
    b_cpu = LAST_CPU[0]
    shutil.rmtree(out_b)
    b_warm, _, _, b_warm_child = timed_child(bcmd, benv)
    shutil.rmtree(out_b)
    shutil.rmtree(cache, ignore_errors=True)
    before = dict(cold_s=b_wall, warm_s=b_warm, rss_gb=b_rss, child=b_child, cpu_s=b_cpu,
                  warm_child=b_warm_child)
  max_abs, max_rel, n = compare(out_jp, out_mk)
  referee = slerp_referee(models, out_jp, out_mk, 0.35) if name == "slerp" else None
  for o in (out_mk, out_jp):
    shutil.rmtree(o, ignore_errors=True)
  row = dict(set=tag, method=name, mergekit_s=mk_wall, jaxparams_s=jp_wall, jaxparams_warm_s=warm,
             speedup=mk_wall / jp_wall, mergekit_rss_gb=mk_rss, jaxparams_rss_gb=jp_rss,
             max_abs=max_abs, max_rel=max_rel, tensors=n, referee=referee,
             child=child, warm_child=warm_child, io=io, in_bytes=in_bytes, out_bytes=out_bytes,
             before=before, mergekit_cpu_s=mk_cpu, jaxparams_cpu_s=jp_cpu)
  if io is not None:
    row["floor_s"] = in_bytes / (io["read_gbs"] * 1e9) + out_bytes / (io["write_gbs"] * 1e9)
  print(json.dumps(row), flush=True)
  return row


def timed_child(cmd: list[str], env) -> tuple[float, float, str, dict]:
  wall, rss, err = timed(cmd, env=env, keep_stdout=True)
  out, err = err
  line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
  return wall, rss, err, json.loads(line)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--size", default="medium", choices=sorted(SIZES))
  ap.add_argument("--work", default="/tmp/jaxparams-merge-bench")
  ap.add_argument("--out", default=None, help="write the markdown table here")
  ap.add_argument("--sets", default="bf16,fp32")
  ap.add_argument("--methods", default=None, help="comma-separated subset")
  ap.add_argument("--json", default=None, help="also write the rows as JSON here")
  args = ap.parse_args()
  work = Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  only = set(args.methods.split(",")) if args.methods else None
  rows, info = [], {}
  info["startup"] = startup_rss()
  if "bf16" in args.sets:
    m = build(work, args.size, "bfloat16", noise=0.005)
    info["bf16"] = m["params"]
    info["largest"] = largest_tensor(m["base"])
    for name, (body, _) in BIG.items():
      if only is None or name in only:
        rows.append(run_one(work, f"bf16-{args.size}", name, body, m, "bfloat16",
                            warm_run=True, floor=True) | {"det": True})
  if "fp32" in args.sets:
    m = build(work, "small", "float32", noise=0.02)
    info["fp32"] = m["params"]
    for name, (body, det) in SMALL.items():
      if only is None or name in only:
        rows.append(run_one(work, "fp32-small", name, body, m, "float32", warm_run=True)
                    | {"det": det})
  md = report(rows, info, args.size)
  print(md)
  if args.json:
    Path(args.json).write_text(json.dumps({"info": info, "rows": rows, "size": args.size},
                                          indent=1))
  if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)


def report(rows, info, size) -> str:
  cpu = platform.processor() or platform.machine()
  lines = [
      "## Merging: jaxparams vs mergekit 0.1.5 (same YAML, same checkpoints)",
      "",
      f"Measured {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on this machine: {os.cpu_count()} "
      f"CPU cores ({cpu}), shared with other jobs (wall times fluctuate), no GPU. "
      "mergekit 0.1.5 with torch 2.13.0 CPU (`mergekit-yaml --no-copy-tokenizer --quiet "
      "--random-seed 0 --out-shard-size 5B`); jaxparams `python -m jaxparams.cli.merge` "
      "(jax CPU). Both are fresh processes under `/usr/bin/time -v`: wall time and peak RSS "
      "include Python/library start-up and jit compilation. 'cold' = empty persistent XLA "
      "compilation cache (`--compile-cache` in a fresh folder); 'warm cache' = the same command "
      "again, kernels loaded from that cache (what a user sees on a repeated merge); the "
      "speed-up column uses the cold time.",
      "",
  ]
  if "bf16" in info:
    lines.append(f"* bf16 set: 3 Llama checkpoints (base + 2 noisy fine-tunes), "
                 f"{info['bf16'] / 1e9:.3f}B params each (`--size {size}`"
                 + ("; the issue's figures are for ~0.5B" if size != "large" else "") + ").")
  if "fp32" in info:
    lines.append(f"* fp32 set: 3 Llama checkpoints of {info['fp32'] / 1e6:.1f}M params each.")
  lines += ["", "| set | method | mergekit s | jaxparams s (cold) | speed-up | jaxparams s "
            "(warm cache) | speed-up (warm) | CPU s mergekit / jaxparams cold | mergekit RSS GB | "
            "jaxparams RSS GB | max abs diff | max rel diff |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    rel = f"{r['max_rel']:.1e}" if r["det"] else "random (not compared)"
    ab = f"{r['max_abs']:.1e}" if r["det"] else "-"
    warm = f"{r['jaxparams_warm_s']:.1f}" if r.get("jaxparams_warm_s") else "-"
    wsp = (f"{r['mergekit_s'] / r['jaxparams_warm_s']:.2f}x" if r.get("jaxparams_warm_s")
           else "-")
    lines.append(f"| {r['set']} | {r['method']} | {r['mergekit_s']:.1f} | {r['jaxparams_s']:.1f} "
                 f"| {r['speedup']:.2f}x | {warm} | {wsp} | {r['mergekit_cpu_s']:.0f} / "
                 f"{r['jaxparams_cpu_s']:.0f} | {r['mergekit_rss_gb']:.2f} | "
                 f"{r['jaxparams_rss_gb']:.2f} | {ab} | {rel} |")
  lines += floor_table(rows, info)
  lines += before_table(rows)
  for r in rows:
    if r.get("referee"):
      why = ("both are the bf16 rounding of the output" if r["set"].startswith("bf16") else
             "the fp32 differences come from summation order in the whole-tensor dot product "
             "and norms")
      lines += ["", f"slerp ({r['set']}) against the same formula evaluated in float64: max abs "
                f"error jaxparams {r['referee']['jaxparams']:.1e}, mergekit "
                f"{r['referee']['mergekit']:.1e} ({why})."]
  lines += ["", "Max relative diff = max over tensors of max|jaxparams - mergekit| / "
            "max|mergekit|. bf16: mergekit's task-vector methods compute in bf16, jaxparams in "
            "fp32 (then rounds to bf16), so differences of a bf16 ulp are expected there.", ""]
  return "\n".join(lines)


def before_table(rows) -> list[str]:
  rows = [r for r in rows if r.get("before")]
  if not rows:
    return []
  out = ["", f"### Before / after this change, same run (before: `{BEFORE}` first on PYTHONPATH)",
         "", "| set | method | before cold s | after cold s | before warm s | after warm s | "
         "before merge s (warm, after start-up) | after | before CPU s (cold) | after | "
         "before RSS GB | after RSS GB |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    b = r["before"]
    aw = r["warm_child"] or r["child"]
    out.append(f"| {r['set']} | {r['method']} | {b['cold_s']:.1f} | {r['jaxparams_s']:.1f} | "
               f"{b['warm_s']:.1f} | {(r['jaxparams_warm_s'] or 0):.1f} | "
               f"{b['warm_child']['merge_s']:.2f} | {aw['merge_s']:.2f} | {b['cpu_s']:.1f} | "
               f"{r['jaxparams_cpu_s']:.1f} | {b['rss_gb']:.2f} | "
               f"{r['jaxparams_rss_gb']:.2f} |")
  return out


def floor_table(rows, info) -> list[str]:
  """The bf16 rows against the I/O floor, with start-up and compile time apart."""
  rows = [r for r in rows if r.get("io")]
  if not rows:
    return []
  st_s, st_rss = info["startup"]
  big = info["largest"]
  out = ["", "### Against the I/O floor (bf16 set)", "",
         f"I/O floor = input bytes / read bandwidth + output bytes / write bandwidth, both "
         f"measured in this run just before each row (sequential 16 MiB reads of the input files "
         f"a merge reads, through the page cache as the merges read them: dropping the cache "
         f"needs root; a write of a file of the output's size, not fsynced, as neither tool "
         f"fsyncs). Start-up = `import jax` + jaxparams CLI and merge modules in the merge process "
         f"(a bare import-only process: {st_s:.1f} s wall, {st_rss:.2f} GB peak RSS). Compile = "
         f"jax tracing + lowering + XLA compile (cold) or persistent-cache loading (warm), "
         f"from `jax.monitoring` events in the merge process. 'after start-up' = the merge "
         f"call (plan, read, compute, compile, write). RSS above start-up is counted in units "
         f"of the largest tensor ({big / 1e6:.0f} MB, the embedding).", "",
         "| method | read GB/s | write GB/s | in+out GB | I/O floor s | start-up s | compile s "
         "cold / warm | after start-up s cold / warm | warm / floor | warm minus compile / floor "
         "| speed-up vs mergekit cold / warm | jaxparams RSS GB | RSS above start-up / largest "
         "tensor |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    io, c, w = r["io"], r["child"], r["warm_child"] or r["child"]
    warm_s = r["jaxparams_warm_s"] or r["jaxparams_s"]
    out.append(
        f"| {r['method']} | {io['read_gbs']:.2f} | {io['write_gbs']:.2f} | "
        f"{(r['in_bytes'] + r['out_bytes']) / 1e9:.2f} | {r['floor_s']:.2f} | "
        f"{c['startup_s']:.1f} | {c['compile_s']:.1f} / {w['compile_s']:.1f} | "
        f"{c['merge_s']:.1f} / {w['merge_s']:.1f} | {w['merge_s'] / r['floor_s']:.2f}x | "
        f"{(w['merge_s'] - w['compile_s']) / r['floor_s']:.2f}x | "
        f"{r['speedup']:.2f}x / {r['mergekit_s'] / warm_s:.2f}x | {r['jaxparams_rss_gb']:.2f} | "
        f"{max(r['jaxparams_rss_gb'] - st_rss, 0) * 1e9 / big:.1f} |")
  return out


if __name__ == "__main__":
  main()
