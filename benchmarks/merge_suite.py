"""The merging suite (digits): accuracy table of every method, AdaMerging variants, MAP vs grid.

Builds :func:`jaxparams.demo.digits_suite.build_suite` (a backbone pretrained on 150
``domain x digit`` classes; 8 tasks = transformation families at full strength, each with its
frozen head = its domain's 10 columns of the pretraining head; one expert backbone per task),
runs every method of :func:`jaxparams.demo.digits_methods.merge_table`, then

* AdaMerging variants (what closes the gap to task arithmetic), each a full run;
* entropy vs accuracy along task arithmetic's ``lam`` (is AdaMerging's loss a proxy?);
* MAP on two tasks: quadratic surrogates fitted from a few evaluated merges vs the exact
  front of a dense grid evaluated in one vmapped call;
* MergeLock on the suite (expert 0 locked by a hidden-unit permutation).

Writes the table as JSON to ``--out``: ``{"<method>": {"average": x, "tasks": {"<task>": x},
"seconds": s, "cpu_seconds": s, ...}}`` (accuracies in [0, 1]; ``expert`` and ``pretrained``
rows included; non-method entries start with ``_``), and a markdown report beside it
(``OUT`` with suffix ``.md``). Without ``--out`` both go to ``benchmarks/results/
merge_suite_s<seed>.json/.md``. Nothing else is written.

Usage: ``python benchmarks/merge_suite.py [--seed S] [--out RESULT.json] [--tasks rotate,mirror]
[--no-variants]``; ``--summarize s0.json s1.json ...`` prints the mean +- sd table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.demo import digits_methods as dm
from jaxparams.demo import digits_suite as ds
from jaxparams.merge import learned

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
FUSIONBENCH = {"pretrained": 48.2, "simple_average": 66.5, "task_arithmetic": 68.0,
               "fisher": 70.6, "ties": 72.2, "regmean": 82.4, "adamerging_task": 68.7,
               "adamerging_layer": 82.6, "adamerging_ties_task": 70.6,
               "adamerging_ties_layer": 83.4, "expert": 90.3}
#: AdaMerging variants: row name -> merge_table options (each run layer-wise and task-wise
#: as named). The table's own rows are FusionBench's settings.
VARIANTS = {
    "adamerging_layer_clamp01": ("adamerging_layer", {"ada_clamp": (0.0, 1.0)}),
    "adamerging_layer_lr1e-2": ("adamerging_layer", {"ada_lr": 1e-2}),
    "adamerging_layer_moredata": ("adamerging_layer", {"ada_split": "test+train"}),
    "adamerging_layer_t0.2": ("adamerging_layer", {"ada_temperature": 0.2}),
    "adamerging_ties_layer_init0.3": ("adamerging_ties_layer", {"ada_ties_start": False}),
}


#: Rows --core leaves out.
CORE_SKIP = ("cmaes_task", "cmaes_layer", "m2n2")


def entropy_sweep(suite, lams=(0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)):
  """Summed entropy (AdaMerging's loss) and mean test accuracy of task arithmetic along lam."""
  ent, acc = ds.entropy_objective(suite), ds.task_accuracies_fn(suite)

  @jax.jit
  def f(l):
    m = learned.taskwise_merge(suite.pretrained, suite.experts,
                               jnp.full(len(suite.experts), l))
    return ent(m), jnp.mean(acc(m))

  return [(float(l), *map(float, f(l))) for l in lams]


def map_study(suite, pair=(0, 1), n_samples=12, grid_n=21, lo=0.0, hi=1.5, seed=0):
  """MAP on tasks ``pair``: surrogate from ``n_samples`` merges vs a ``grid_n^2`` dense grid."""
  sub = ds.DigitsSuite(suite.module, suite.pretrained, [suite.experts[i] for i in pair],
                       [suite.tasks[i] for i in pair])
  acc = ds.task_accuracies_fn(sub)
  merge_eval = jax.jit(jax.vmap(lambda c: acc(learned.taskwise_merge(sub.pretrained,
                                                                     sub.experts, c))))
  g = np.linspace(lo, hi, grid_n, dtype=np.float32)
  grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
  t0 = time.perf_counter()
  exact = np.asarray(jax.block_until_ready(merge_eval(jnp.asarray(grid))))
  t_grid = time.perf_counter() - t0
  c = np.random.default_rng(seed).uniform(lo, hi, (n_samples, 2)).astype(np.float32)
  sur = learned.fit_surrogate(c, merge_eval(jnp.asarray(c)))
  pred = np.asarray(learned.predict_surrogate(sur, grid))
  err = np.abs(pred - exact)
  front_exact = np.asarray(learned.pareto_mask(exact))
  front_sur = np.asarray(learned.pareto_mask(pred))
  return {"tasks": [sub.names[0], sub.names[1]], "samples": n_samples, "grid": int(len(grid)),
          "grid_seconds": t_grid, "mae": float(err.mean()), "max_err": float(err.max()),
          "front_mae": float(err[front_sur].mean()),
          "hv_exact": learned.hypervolume_2d(exact[front_exact]),
          "hv_surrogate": learned.hypervolume_2d(exact[front_sur]),
          "n_front_exact": int(front_exact.sum()), "n_front_sur": int(front_sur.sum()),
          "grid_points": np.round(grid, 4).tolist(), "exact": np.round(exact, 4).tolist(),
          "pred": np.round(pred, 4).tolist(), "sample_points": np.round(c, 4).tolist()}


def mergelock_study(suite, lam=0.5):
  """Lock expert 0 (hidden units of layers_0 permuted; GELU: no rescaling) and merge it."""
  from jaxparams import merge as jm
  locked, _ = learned.lock_mlp(suite.experts[0], jax.random.key(0),
                               pairs=[("layers_0", "layers_1")], spread=0.0)
  x = jnp.asarray(suite.tasks[0].x_test)
  diff = float(jnp.max(jnp.abs(ds.forward(suite.module, locked, suite.tasks[0].head, x)
                               - ds.forward(suite.module, suite.experts[0],
                                            suite.tasks[0].head, x))))
  two = ds.DigitsSuite(suite.module, suite.pretrained, suite.experts[:2], suite.tasks[:2])
  rows = {}
  for name, ex in (("plain", two.experts), ("locked", [locked, two.experts[1]])):
    rows[name] = {"task_arithmetic": ds.evaluate(two, jm.task_arithmetic(two.pretrained, ex,
                                                                          lam=lam)),
                  "expert_0_alone": ds.evaluate(two, ex[0])}
  return {"max_logit_diff": diff, "rows": rows}


def _row(r):
  out = {"average": r["acc"]["average"],
         "tasks": {k: v for k, v in r["acc"].items() if k != "average"},
         "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"]}
  out.update({k: v for k, v in r.items() if k not in ("acc", "seconds", "cpu_seconds")})
  return out


def report(js, names) -> str:
  """The markdown report of one seed's JSON."""
  meta = js["_meta"]
  rows = [m for m in js if not m.startswith("_")]
  lines = [
      "# The merging suite on digits (benchmarks/merge_suite.py)", "",
      f"{meta['machine']}, {meta['date']}, seed {meta['seed']}. Suite built in "
      f"{meta['build_seconds']:.0f}s wall / {meta['build_cpu_seconds']:.0f}s CPU; whole run "
      f"{meta['total_seconds']:.0f}s wall / {meta['total_cpu_seconds']:.0f}s CPU (shared "
      "machine: wall times are noisy, CPU seconds are user+sys of this process).", "",
      "Accuracy (%) on each task's 400 test images, each task with its own frozen head:", "",
      "| method | " + " | ".join(names) + " | **average** | FusionBench ViT-B/32 | evals | "
      "CPU s |", "|---|" + "---|" * (len(names) + 4)]
  for m in rows:
    r = js[m]
    fb = FUSIONBENCH.get(m, "")
    lines.append(f"| {m} | " + " | ".join(f"{100 * r['tasks'][n]:.1f}" for n in names)
                 + f" | **{100 * r['average']:.1f}** | {fb} | {r.get('evaluations', '')} | "
                 f"{r['cpu_seconds']:.0f} |")
  extra = []
  for m in rows:
    r = js[m]
    kv = {k: v for k, v in r.items() if isinstance(v, (int, float)) and k not in
          ("average", "seconds", "cpu_seconds", "evaluations")}
    if kv:
      extra.append(f"{m}: " + ", ".join(f"{k}={v:.3g}" for k, v in kv.items()))
  lines += ["", "Extra per method: " + "; ".join(extra), ""]
  ad = js["_adamerging"]
  lines += ["## AdaMerging: entropy vs accuracy along task arithmetic's lam", "",
            "| lam | summed entropy | mean test accuracy % |", "|---|---|---|"]
  lines += [f"| {l:.1f} | {e:.3f} | {100 * a:.1f} |" for l, e, a in ad["sweep"]]
  lines += ["", "Along each AdaMerging run (step: summed entropy / mean test accuracy %):", ""]
  for m, tr in ad["trace"].items():
    lines.append(f"- {m}: " + ", ".join(f"{t['step']}: {t['entropy']:.2f}/"
                                        f"{100 * t['accuracy']:.1f}" for t in tr))
  mp = js["_map"]
  if mp is None:
    return "\n".join(lines)
  lines += [
      "", f"## MAP: quadratic surrogate vs dense grid ({mp['tasks'][0]} x {mp['tasks'][1]})", "",
      f"Task-arithmetic coefficients c in [0, 1.5]^2; surrogate fitted from {mp['samples']} "
      f"evaluated merges; exact accuracies on a {mp['grid']}-point grid in one vmapped call "
      f"({mp['grid_seconds']:.1f}s).", "", "| quantity | value |", "|---|---|",
      f"| surrogate MAE over grid | {mp['mae']:.4f} |",
      f"| surrogate max error | {mp['max_err']:.4f} |",
      f"| surrogate error on its front | {mp['front_mae']:.4f} |",
      f"| hypervolume exact front | {mp['hv_exact']:.4f} |",
      f"| hypervolume of surrogate-front coefficients (true accuracies) | "
      f"{mp['hv_surrogate']:.4f} |",
      f"| front sizes exact / surrogate | {mp['n_front_exact']} / {mp['n_front_sur']} |",
      f"| evaluations surrogate / grid | {mp['samples']} / {mp['grid']} |", ""]
  lk = js["_mergelock"]
  lines += ["## MergeLock (expert 0's layers_0 hidden units permuted)", "",
            f"max |logit diff| locked vs original: {lk['max_logit_diff']:.2e}; task "
            "arithmetic (lam 0.5) of experts 0 and 1, average over their two tasks: plain "
            f"{100 * lk['rows']['plain']['task_arithmetic']['average']:.1f}, locked "
            f"{100 * lk['rows']['locked']['task_arithmetic']['average']:.1f} %.", ""]
  return "\n".join(lines)


def summarize(paths) -> str:
  """Mean +- sd (over the given seeds' JSON files) of every method, as a markdown table."""
  runs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
  seeds = [r["_meta"]["seed"] for r in runs]
  methods = [m for m in runs[0] if not m.startswith("_")]
  lines = [f"| method | mean +- sd (seeds {', '.join(map(str, seeds))}) | per seed | "
           "evals | CPU s (mean) | FusionBench |", "|---|---|---|---|---|---|"]
  for m in methods:
    if any(m not in r for r in runs):
      continue
    a = np.array([100 * r[m]["average"] for r in runs])
    sd = a.std(ddof=1) if len(a) > 1 else 0.0
    cpu = np.mean([r[m]["cpu_seconds"] for r in runs])
    lines.append(f"| {m} | {a.mean():.1f} +- {sd:.1f} | " + " / ".join(f"{v:.1f}" for v in a)
                 + f" | {runs[0][m].get('evaluations', '')} | {cpu:.0f} | "
                 f"{FUSIONBENCH.get(m, '')} |")
  return "\n".join(lines + [""] + goals(runs))


def goals(runs) -> list[str]:
  """Issue 23's goals 1-2 checked on each run (lines of markdown)."""
  out = []
  acc = lambda r, m: 100 * r[m]["average"]
  chain = ("pretrained", "simple_average", "task_arithmetic", "ties")
  for r in runs:
    order = all(acc(r, a) < acc(r, b) for a, b in zip(chain, chain[1:]))
    fr = acc(r, "fisher") < acc(r, "regmean")
    top = all(acc(r, "expert") > acc(r, m) for m in r if not m.startswith("_") and m != "expert")
    out.append(f"- seed {r['_meta']['seed']}: goal 1 " + ("holds" if order and fr and top else
               "FAILS") + f" (pretrained < average < TA < TIES: {order}; Fisher < RegMean: "
               f"{fr}; experts above all: {top})")
  for m in ("adamerging_layer", "adamerging_task", "adamerging_ties_layer",
            "adamerging_ties_task"):
    if not all(m in r for r in runs):
      continue
    gap = np.array([acc(r, m) - acc(r, "task_arithmetic") for r in runs])
    ok = gap.mean() >= 2 and (gap > 0).all()
    out.append(f"- goal 2, {m} - task arithmetic: mean {gap.mean():+.1f}, per seed "
               + " / ".join(f"{g:+.1f}" for g in gap) + (" (met)" if ok else " (not met)"))
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--tasks", default=",".join(ds.TASKS))
  ap.add_argument("--out", default=None,
                  help="JSON path (markdown beside it); default benchmarks/results/"
                  "merge_suite_s<seed>.json")
  ap.add_argument("--no-variants", action="store_true", help="skip the AdaMerging variants")
  ap.add_argument("--core", action="store_true",
                  help="only the rows of goals 1-2 (no black-box searches, AdaMerging "
                  "variants, traces, MAP or MergeLock): for extra seeds on a busy machine")
  ap.add_argument("--summarize", nargs="+", metavar="JSON",
                  help="print the mean +- sd table of these runs' JSON files (writes nothing)")
  a = ap.parse_args(argv)
  if a.summarize:
    print(summarize(a.summarize))
    return
  out = pathlib.Path(a.out) if a.out else RESULTS / f"merge_suite_s{a.seed}.json"
  t00, c00 = time.perf_counter(), time.process_time()
  suite = ds.build_suite(a.tasks.split(","), seed=a.seed)
  jax.block_until_ready(suite.experts)
  t_build, c_build = time.perf_counter() - t00, time.process_time() - c00
  methods = [m for m in dm.TABLE_METHODS if not a.core or m not in CORE_SKIP]
  table = dm.merge_table(suite, methods, seed=a.seed,
                         **({"ada_trace_every": 0} if a.core else {}))
  js = {m: _row(r) for m, r in table.items()}
  if not (a.no_variants or a.core):
    for name, (method, opts) in VARIANTS.items():
      js[name] = _row(dm.merge_table(suite, (method,), seed=a.seed, **opts)[method])
  js["_adamerging"] = {"sweep": entropy_sweep(suite),
                       "trace": {m: r.pop("trace") for m, r in js.items()
                                 if isinstance(r, dict) and "trace" in r}}
  js["_map"] = None if a.core else map_study(suite, seed=a.seed)
  js["_mergelock"] = None if a.core else mergelock_study(suite)
  js["_meta"] = {"seed": a.seed, "tasks": suite.names,
                 "machine": f"{platform.machine()} CPU ({jax.device_count()} JAX devices)",
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "build_seconds": t_build, "build_cpu_seconds": c_build,
                 "total_seconds": time.perf_counter() - t00,
                 "total_cpu_seconds": time.process_time() - c00}
  text = report(js, suite.names)
  print(text)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(js, indent=1))
  out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
  main()
