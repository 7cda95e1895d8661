"""Time and peak memory of each driver against model size (issue 15, scaling).

For each Llama size of ``merge_vs_mergekit.py`` (``small`` 5M, ``medium`` 168M, ``large``
542M parameters, bf16; a base and two noisy fine-tunes), fresh processes under
``/usr/bin/time -v`` (wall, user+system CPU seconds, peak RSS), start-up and compile
seconds from ``benchmarks/merge_child.py`` (``jax.monitoring`` events):

* streaming merge (``jaxparams merge``): ``task_arithmetic`` and ``ties``, empty
  compilation cache;
* streaming quantization (``jaxparams quantize``): RTN 4-bit per-channel of the base
  (group 128 does not divide the small model's 688);
* tree driver (``merge_trees``, every tensor of the three models in memory):
  ``task_arithmetic``.

Writes ``benchmarks/results/scaling.md`` (+ ``.json``) and one plot per driver,
``benchmarks/results/scaling_{merge_stream,quant_stream,merge_tree}.png``.

Usage::

  python benchmarks/scaling.py --work /tmp/speed [--sizes small,medium,large]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import merge_vs_mergekit as mvm  # noqa: E402  pylint: disable=wrong-import-position

TREE = """
import sys, time, json
t0 = time.perf_counter()
import jax, numpy as np
from jaxparams.io import load_safetensors, save_safetensors
from jaxparams.merge import merge_trees
t1 = time.perf_counter()
base, a, b, out = sys.argv[1:5]
trees = [load_safetensors(p) for p in (base, a, b)]
t2 = time.perf_counter()
m = merge_trees('task_arithmetic', trees[0], trees[1:], model_params={'weight': [0.5, 0.5]})
m = jax.device_get(m)
t3 = time.perf_counter()
save_safetensors(m, out)
t4 = time.perf_counter()
print(json.dumps({'startup_s': t1 - t0, 'load_s': t2 - t1, 'merge_s': t3 - t2,
                  'save_s': t4 - t3}))
"""


def run(cmd, env) -> dict:
  wall, rss, (out, _) = mvm.timed(cmd, env=env, keep_stdout=True)
  child = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
  return dict(wall_s=wall, rss_gb=rss, cpu_s=mvm.LAST_CPU[0], **child)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--work", default="/tmp/jaxparams-scaling")
  ap.add_argument("--sizes", default="small,medium,large")
  ap.add_argument("--no-tree", action="store_true")
  ap.add_argument("--out", default=str(HERE / "results" / "scaling.md"))
  ap.add_argument("--append", action="store_true",
                  help="add to the rows already in the --out .json (sizes run separately)")
  args = ap.parse_args()
  work = Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  rows = []
  if args.append and Path(args.out).with_suffix(".json").is_file():
    rows = json.loads(Path(args.out).with_suffix(".json").read_text())
  for size in args.sizes.split(","):
    m = mvm.build(work, size, "bfloat16", noise=0.005)
    gb = mvm.model_bytes(m["base"]) / 1e9
    common = dict(size=size, params=m["params"], model_gb=gb,
                  largest_gb=mvm.largest_tensor(m["base"]) / 1e9)
    for method in ("task_arithmetic", "ties"):
      recipe = work / "recipes" / f"scaling-{size}-{method}.yml"
      recipe.parent.mkdir(exist_ok=True)
      recipe.write_text(mvm.BIG[method][0].format(**m) + "dtype: bfloat16\n")
      out, cache = work / f"scal-out-{size}-{method}", work / f"scal-cache-{size}-{method}"
      shutil.rmtree(out, ignore_errors=True)
      shutil.rmtree(cache, ignore_errors=True)
      r = run([sys.executable, str(mvm.CHILD), str(recipe), str(out), "--quiet",
               "--no-copy-tokenizer", "--compile-cache", str(cache)], env)
      shutil.rmtree(out, ignore_errors=True)
      shutil.rmtree(cache, ignore_errors=True)
      rows.append(dict(common, driver="merge_stream", what=method, io_gb=4 * gb, **r))
      print(json.dumps(rows[-1]), flush=True)
    out = work / f"scal-q-{size}"
    shutil.rmtree(out, ignore_errors=True)
    r = run([sys.executable, str(mvm.CHILD), "--sub", "quantize", m["base"], str(out),
             "--method", "rtn", "--bits", "4", "--group-size", "-1", "--no-progress"], env)
    q_gb = mvm.model_bytes(str(out)) / 1e9
    shutil.rmtree(out, ignore_errors=True)
    rows.append(dict(common, driver="quant_stream", what="rtn 4-bit per-channel",
                     io_gb=gb + q_gb, **r))
    print(json.dumps(rows[-1]), flush=True)
    if not args.no_tree:
      out = work / f"scal-tree-{size}"
      shutil.rmtree(out, ignore_errors=True)
      r = run([sys.executable, "-c", TREE, m["base"], m["a"], m["b"], str(out)], env)
      shutil.rmtree(out, ignore_errors=True)
      rows.append(dict(common, driver="merge_tree", what="task_arithmetic", io_gb=4 * gb, **r))
      print(json.dumps(rows[-1]), flush=True)
  Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
  Path(args.out).write_text(report(rows))
  plots(rows, Path(args.out).parent)
  print(Path(args.out).read_text())


def report(rows) -> str:
  lines = [
      "## Scaling with model size (benchmarks/scaling.py)", "",
      f"Measured {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPU cores "
      f"({platform.machine()}) shared with ~7 other engineers' jobs (load average 10-20 during "
      "the run: wall seconds are inflated and noisy, CPU seconds = user + system of the process "
      "are the steadier measure). Fresh processes under `/usr/bin/time -v`, empty compilation "
      "cache. bf16 Llama checkpoints (base + 2 noisy copies); `run s` = the command after "
      "start-up (imports), `compile s` inside it; RSS above start-up in units of the largest "
      "tensor.", "",
      "| driver | what | size | params | model GB | wall s | CPU s | start-up s | run s | "
      "compile s | run - compile s | s per GB moved (run - compile) | peak RSS GB | "
      "RSS / largest tensor |",
      "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    run_s = r.get("merge_s", 0.0) + r.get("load_s", 0.0) + r.get("save_s", 0.0)
    comp = r.get("compile_s", float("nan"))
    rest = run_s - comp if comp == comp else float("nan")
    lines.append(
        f"| {r['driver']} | {r['what']} | {r['size']} | {r['params'] / 1e6:.0f}M | "
        f"{r['model_gb']:.2f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['startup_s']:.1f} | "
        f"{run_s:.1f} | {comp:.1f} | {rest:.1f} | {rest / r['io_gb']:.1f} | {r['rss_gb']:.2f} | "
        f"{r['rss_gb'] / r['largest_gb']:.1f} |")
  return "\n".join(lines) + "\n"


def plots(rows, folder: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  for driver in sorted({r["driver"] for r in rows}):
    sel = [r for r in rows if r["driver"] == driver]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for what in sorted({r["what"] for r in sel}):
      rs = sorted((r for r in sel if r["what"] == what), key=lambda r: r["params"])
      x = [r["params"] / 1e6 for r in rs]
      run_s = [r.get("merge_s", 0.0) + r.get("load_s", 0.0) + r.get("save_s", 0.0) for r in rs]
      ax1.plot(x, [r["wall_s"] for r in rs], "o-", label=f"{what}: wall")
      ax1.plot(x, [r["cpu_s"] for r in rs], "s--", label=f"{what}: CPU")
      ax1.plot(x, run_s, "^:", label=f"{what}: after start-up")
      ax2.plot(x, [r["rss_gb"] for r in rs], "o-", label=f"{what}: peak RSS")
      ax2.plot(x, [r["model_gb"] for r in rs], "k:", label="one model's size")
    for ax, yl in ((ax1, "seconds"), (ax2, "GB")):
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_xlabel("parameters (M)")
      ax.set_ylabel(yl)
      ax.legend(fontsize=7)
      ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{driver}: time and peak RSS vs model size (shared 2-core CPU)")
    fig.tight_layout()
    fig.savefig(folder / f"scaling_{driver}.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
  main()
