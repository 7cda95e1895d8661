"""The merging suite (digits): accuracy table of every method + MAP surrogate vs dense grid.

Builds :func:`jaxparams.demo.digits_suite.build_suite` (8 distribution-shift tasks of
scikit-learn's digits, one expert backbone per task), runs every method of
:func:`~jaxparams.demo.digits_suite.merge_table`, then MAP on a pair of tasks: quadratic
surrogates fitted from a few evaluated coefficient vectors vs the exact front of a dense grid
evaluated in one vmapped call; AdaMerging's entropy vs accuracy along its optimisation (and on
a CLIP-style suite whose heads read unit-norm features); MergeLock; M2N2 vs a genetic baseline.
Writes ``benchmarks/results/merge_suite.md`` and, with ``--out``, the table as JSON:
``{"<method>": {"average": x, "tasks": {"<task>": x}, "seconds": s}}`` (accuracies in [0, 1],
``expert`` and ``pretrained`` rows included; non-method entries start with ``_``: ``_map``,
``_adamerging``).

Usage: ``python benchmarks/merge_suite.py [--seed S] [--out RESULT.json] [--tasks rotate,mirror]``
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

from jaxparams.demo import digits_suite as ds
from jaxparams.merge import learned

MD = pathlib.Path(__file__).resolve().parent / "results" / "merge_suite.md"
FUSIONBENCH = {"pretrained": 48.2, "simple_average": 66.5, "task_arithmetic": 68.0,
               "fisher": 70.6, "ties": 72.2, "regmean": 82.4, "adamerging_task": 68.7,
               "adamerging_layer": 82.6, "adamerging_ties_task": 70.6,
               "adamerging_ties_layer": 83.4, "experts": 90.3}


def entropy_sweep(suite, lams=(0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)):
  """Summed entropy (AdaMerging's loss) and mean test accuracy of task arithmetic along lam."""
  ent, acc = ds.entropy_objective(suite), ds.task_accuracies_fn(suite)
  f = jax.jit(lambda l: (ent(learned.taskwise_merge(suite.pretrained, suite.experts,
                                                    jnp.full(len(suite.experts), l))),
                         jnp.mean(acc(learned.taskwise_merge(suite.pretrained, suite.experts,
                                                             jnp.full(len(suite.experts), l))))))
  return [(float(l), *map(float, f(l))) for l in lams]


def clip_style_study(tasks, seed=0, feature_scale=10.0):
  """The same suite with CLIP-style heads (unit-norm features x a logit scale): AdaMerging."""
  t0 = time.perf_counter()
  suite = ds.build_suite(tasks, seed=seed, feature_scale=feature_scale)
  table = ds.merge_table(suite, ("pretrained", "experts", "task_arithmetic", "ties",
                                 "adamerging_task", "adamerging_layer", "adamerging_ties_layer"),
                         seed=seed)
  return {"build_seconds": time.perf_counter() - t0, "table": table,
          "sweep": entropy_sweep(suite)}


def map_study(suite, pair=(0, 1), n_samples=12, grid_n=41, lo=0.0, hi=1.5, seed=0):
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
  hv_exact = learned.hypervolume_2d(exact[front_exact])
  hv_sur = learned.hypervolume_2d(exact[front_sur])  # true accuracies at the surrogate's front
  return {"tasks": [sub.names[0], sub.names[1]], "samples": n_samples, "grid": int(len(grid)),
          "grid_seconds": t_grid, "mae": float(err.mean()), "max_err": float(err.max()),
          "front_mae": float(err[front_sur].mean()), "hv_exact": hv_exact, "hv_surrogate": hv_sur,
          "n_front_exact": int(front_exact.sum()), "n_front_sur": int(front_sur.sum()),
          "grid_points": grid, "exact": exact, "pred": pred}


def mergelock_study(suite, lam=0.5):
  """Lock expert 0 (ReLU hidden units permuted + rescaled) and merge it with expert 1."""
  from jaxparams import merge as jm
  locked, _ = learned.lock_mlp(suite.experts[0], jax.random.key(0),
                               pairs=[("layers_0", "layers_1")])
  x = jnp.asarray(suite.tasks[0].x_test)
  diff = float(jnp.max(jnp.abs(ds.forward(suite.module, locked, suite.tasks[0].head, x)
                               - ds.forward(suite.module, suite.experts[0],
                                            suite.tasks[0].head, x))))
  rows = {}
  two = ds.DigitsSuite(suite.module, suite.pretrained, suite.experts[:2], suite.tasks[:2])
  for name, ex in (("plain", two.experts), ("locked", [locked, two.experts[1]])):
    rows[name] = {
        "task_arithmetic": ds.evaluate(two, jm.task_arithmetic(two.pretrained, ex, lam=lam)),
        "ties": ds.evaluate(two, jm.ties(two.pretrained, ex, density=0.2, lam=lam,
                                         normalize=False)),
        "expert_0_alone": ds.evaluate(two, ex[0])}
  return diff, rows


def mergelock_minilm(n_sentences=64):
  """Lock MiniLM's attention; embeddings kept; averaging with an unlocked copy collapses."""
  from jaxparams import merge as jm
  from jaxparams.calib import docstring_sentences
  from jaxparams.models import load_minilm, minilm
  module, params, config, tok = load_minilm(dtype=jnp.float32)
  mods = [f"layers_{i}/attn" for i in range(config.num_hidden_layers)]
  locked, _ = learned.lock_attention(params, jax.random.key(0), modules=mods,
                                     num_heads=config.num_attention_heads)
  texts = docstring_sentences(n_sentences)
  emb = lambda p: minilm.embed(texts, model=(module, p, config, tok))
  ref = emb(params)
  # A second "fine-tune" of the same base: the original weights plus small noise.
  leaves, tdef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  other = jax.tree.unflatten(tdef, [l + 0.002 * jnp.std(l) * jax.random.normal(k, l.shape)
                                    for l, k in zip(leaves, keys)])
  rows = {}
  for name, p in (("locked", locked), ("other fine-tune", other),
                  ("average(original, other)", jm.linear([params, other])),
                  ("average(locked, other)", jm.linear([locked, other])),
                  ("TIES(original, other; base original)",
                   jm.ties(params, [params, other], density=0.2, lam=1.0)),
                  ("TIES(locked, other; base original)",
                   jm.ties(params, [locked, other], density=0.2, lam=1.0))):
    e = emb(p)
    cos = np.sum(e * ref, -1)
    rows[name] = (float(cos.min()), float(cos.mean()), float(np.abs(e - ref).max()))
  return {"n": len(texts), "rows": rows}


def m2n2_study(seed=0, steps=1500, pop_size=16, n_train=500):
  """M2N2 from scratch on original digits (MLP 64-16-10) vs a plain genetic baseline."""
  from jax.flatten_util import ravel_pytree
  from sklearn.datasets import load_digits
  from jaxparams.models import MLP
  d = load_digits()
  x = jnp.asarray((d.data / 16.0).astype(np.float32))
  y = jnp.asarray(d.target)
  perm = np.random.default_rng(seed).permutation(len(x))
  tr, te = perm[:n_train], perm[n_train:]
  mod = MLP(features=(16, 10))
  p0 = mod.init(jax.random.key(seed), x[:1])["params"]
  _, unravel = ravel_pytree(p0)
  pop = jnp.stack([ravel_pytree(mod.init(k, x[:1])["params"])[0]
                   for k in jax.random.split(jax.random.key(seed + 1), pop_size)])
  correct = lambda w, idx: (jnp.argmax(mod.apply({"params": unravel(w)}, x[idx]), -1)
                            == y[idx]).astype(jnp.float32)
  out = {}
  for name, kw in (("M2N2 (competition + attraction)", {}),
                   ("genetic baseline (no sharing, fitness mating)",
                    {"alpha": 0.0, "attraction": False})):
    t0 = time.perf_counter()
    fin, sc, hist = jax.jit(lambda k, p, kw=kw: learned.m2n2_evolve(
        k, p, lambda w: correct(w, tr), steps=steps, mutation=0.01, stats=True, **kw))(
            jax.random.key(seed), pop)
    test = jax.vmap(lambda w: jnp.mean(correct(w, te)))(fin)
    at = (0, steps // 4, steps // 2, 3 * steps // 4, steps - 1)
    out[name] = {"best_test": float(test.max()), "mean_train": float(hist["mean"][-1]),
                 "coverage": float(jnp.mean(jnp.max(sc, 0))),
                 "at": {k: [float(hist[k][i]) for i in at] for k in ("mean", "best", "coverage")},
                 "seconds": time.perf_counter() - t0}
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--tasks", default=",".join(ds.SHIFTS))
  ap.add_argument("--out", default=None, help="write the table as JSON here")
  ap.add_argument("--md", default=str(MD), help="markdown report (default %(default)s)")
  a = ap.parse_args(argv)
  t0 = time.perf_counter()
  suite = ds.build_suite(a.tasks.split(","), seed=a.seed)
  t_build = time.perf_counter() - t0
  table = ds.merge_table(suite, seed=a.seed)
  sweep = entropy_sweep(suite)
  clip = clip_style_study(a.tasks.split(","), seed=a.seed)
  mp = map_study(suite, seed=a.seed)
  lock_diff, lock_rows = mergelock_study(suite)
  evo = m2n2_study(seed=a.seed)
  try:
    lock_minilm = mergelock_minilm()
  except ImportError:  # the MiniLM weights are an optional package
    lock_minilm = None
  names = suite.names
  lines = [
      "# The merging suite on digits (benchmarks/merge_suite.py)", "",
      f"Machine: {platform.machine()} CPU ({jax.device_count()} JAX devices), shared with other "
      f"engineers (times are wall-clock, noisy). Date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
      f"seed {a.seed}. Suite built in {t_build:.1f}s: backbone MLP 64-256-64 (ReLU features), "
      "per-task fixed heads (50-step probe from the pretraining head), experts fine-tuned 300 "
      "Adam steps (lr 1e-3) with the head frozen; test = 599 held-out images per task.", "",
      "Accuracy (%) on each task's test images, each task with its own head:", "",
      "| method | " + " | ".join(names) + " | **average** | FusionBench ViT-B/32 avg | time s |",
      "|---|" + "---|" * (len(names) + 3)]
  for m, r in table.items():
    fb = FUSIONBENCH.get(m)
    lines.append(f"| {m} | " + " | ".join(f"{100 * r['acc'][n]:.1f}" for n in names)
                 + f" | **{100 * r['acc']['average']:.1f}** | {'' if fb is None else fb} | "
                 f"{r['seconds']:.1f} |")
  lines += ["", "Extra per method: " + "; ".join(
      f"{m}: " + ", ".join(f"{k}={v:.3g}" for k, v in r.items()
                           if k not in ("acc", "seconds", "trace"))
      for m, r in table.items() if len(r) > 2), ""]
  order = sorted((m for m in table if m != "experts"), key=lambda m: -table[m]["acc"]["average"])
  lines += ["Measured ranking (merged methods, best first): " + " > ".join(
      f"{m} {100 * table[m]['acc']['average']:.1f}" for m in order), ""]
  lines += ["## AdaMerging: entropy is not a proxy for accuracy on this suite", "",
            "AdaMerging as the paper's code: coefficients init 0.3, clipped to [0, 1], Adam "
            "lr 1e-3, 500 steps, loss = sum over tasks of the mean entropy of each task's own "
            "head on its unlabelled test inputs. Along task arithmetic's lam (all tasks):", "",
            "| lam | summed entropy | mean test accuracy |", "|---|---|---|"]
  lines += [f"| {l:.1f} | {e:.3f} | {100 * ac:.1f} |" for l, e, ac in sweep]
  lines += ["", "Along AdaMerging's optimisation (every 50 steps: summed entropy / mean test "
            "accuracy %):", ""]
  for m in [k for k in table if k.startswith("adamerging")]:
    lines.append(f"- {m}: " + ", ".join(f"{t['entropy']:.2f}/{100 * t['accuracy']:.1f}"
                                        for t in table[m]["trace"]))
  ct = clip["table"]
  lines += ["", f"Same tasks and seed, CLIP-style heads (unit-norm features x logit scale 10, as "
            f"CLIP's zero-shot heads read normalised embeddings; suite rebuilt in "
            f"{clip['build_seconds']:.0f}s): average test accuracy %", "",
            "| method | average | entropy start -> end |", "|---|---|---|"]
  for m, r in ct.items():
    ent = (f"{r['entropy_start']:.2f} -> {r['entropy_end']:.2f}" if "entropy_start" in r
           else "")
    lines.append(f"| {m} | {100 * r['acc']['average']:.1f} | {ent} |")
  lines += ["", "CLIP-style sweep of task arithmetic's lam (lam: entropy / accuracy %): "
            + ", ".join(f"{l:.1f}: {e:.2f}/{100 * ac:.1f}" for l, e, ac in clip["sweep"]), ""]
  for m in [k for k in ct if k.startswith("adamerging")]:
    lines.append(f"- CLIP-style {m}: " + ", ".join(
        f"{t['entropy']:.2f}/{100 * t['accuracy']:.1f}" for t in ct[m]["trace"]))
  lines.append("")
  lines += [
      f"## MAP: quadratic surrogate vs dense grid ({mp['tasks'][0]} x {mp['tasks'][1]})", "",
      f"Task-arithmetic coefficients c in [0, 1.5]^2; surrogate (sigmoid of a quadratic, "
      f"least squares in logit space) fitted from {mp['samples']} evaluated merges; exact "
      f"metrics on a {mp['grid']}-point grid evaluated in ONE vmapped merge+forward call "
      f"({mp['grid_seconds']:.2f}s).", "",
      "| quantity | value |", "|---|---|",
      f"| surrogate MAE over grid (accuracy) | {mp['mae']:.4f} |",
      f"| surrogate max error over grid | {mp['max_err']:.4f} |",
      f"| surrogate error on its own front points | {mp['front_mae']:.4f} |",
      f"| hypervolume of exact front (ref 0,0) | {mp['hv_exact']:.4f} |",
      f"| hypervolume of surrogate-front coefficients, true accuracies | {mp['hv_surrogate']:.4f} |",
      f"| front sizes exact / surrogate | {mp['n_front_exact']} / {mp['n_front_sur']} |",
      f"| evaluations surrogate / grid | {mp['samples']} / {mp['grid']} |", ""]
  t0n = names[0]
  lines += [f"## MergeLock on the suite (expert {t0n!r} locked: hidden units of layers_0 "
            "permuted and positively rescaled)", "",
            f"Locked expert vs original, max |logit difference| on {t0n} test images: "
            f"{lock_diff:.2e}.", "",
            f"Two-model merges of the experts {names[0]!r} and {names[1]!r} (lam 0.5), average "
            f"over those two tasks:", "",
            f"| model | {t0n} acc plain | {t0n} acc locked | average plain | "
            "average locked |", "|---|---|---|---|---|"]
  for m in ("expert_0_alone", "task_arithmetic", "ties"):
    p_, l_ = lock_rows["plain"][m], lock_rows["locked"][m]
    lines.append(f"| {m} | {100 * p_[t0n]:.1f} | {100 * l_[t0n]:.1f} | "
                 f"{100 * p_['average']:.1f} | {100 * l_['average']:.1f} |")
  lines.append("")
  lines += ["## M2N2 from scratch (original digits, MLP 64-16-10, archive 16, 1500 children, "
            "mutation 0.01, 500 training images)", "",
            "Over generations (at 0/25/50/75/100% of the children): archive mean train accuracy, "
            "best member's train accuracy, coverage (train examples some member gets right), %.",
            "", "| variant | mean | best | coverage | best test acc | s |",
            "|---|---|---|---|---|---|"]
  for n, r in evo.items():
    cols = ["/".join(f"{100 * v:.1f}" for v in r["at"][k]) for k in ("mean", "best", "coverage")]
    lines.append(f"| {n} | " + " | ".join(cols)
                 + f" | {100 * r['best_test']:.1f} | {r['seconds']:.1f} |")
  lines.append("")
  if lock_minilm is not None:
    lines += ["## MergeLock on all-MiniLM-L6-v2 (attention Q/K and V/O of all 6 layers locked)",
              "", f"{lock_minilm['n']} sentences; cosine of the sentence embeddings to the "
              "original model's:", "", "| model | min cosine | mean cosine | max abs diff |",
              "|---|---|---|---|"]
    for k, (mn, me, mx) in lock_minilm["rows"].items():
      lines.append(f"| {k} | {mn:.6f} | {me:.6f} | {mx:.2e} |")
    lines.append("")
  text = "\n".join(lines)
  print(text)
  pathlib.Path(a.md).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(a.md).write_text(text + "\n")
  if a.out:
    js = {m: {"average": r["acc"]["average"], "tasks": {n: r["acc"][n] for n in names},
              "seconds": r["seconds"]} for m, r in table.items()}
    js["expert"] = js.pop("experts")
    js["_map"] = {k: v for k, v in mp.items() if not isinstance(v, np.ndarray)}
    js["_adamerging"] = {"sweep_lam_entropy_accuracy": sweep,
                         "trace": {m: r["trace"] for m, r in table.items() if "trace" in r},
                         "clip_style": {m: r["acc"]["average"] for m, r in ct.items()}}
    pathlib.Path(a.out).write_text(json.dumps(js, indent=1))


if __name__ == "__main__":
  main()
