# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Merge search: where Fisher, RegMean, AdaMerging, CMA-ES, M2N2 and MAP stand
#
# The digits merging suite (`jaxparams.demo.digits_suite`) is built like FusionBench's CLIP
# benchmark: a backbone pretrained on many domains (the original digits plus 14
# transformation families, 150 `domain x digit` classes, cosine head on L2-normalised
# features x logit scale 10), eight tasks (rotate, mirror, invert, noisy, blur, shift,
# downsample, elastic) each with its **frozen** head = its domain's 10 columns of the
# pretraining head, one expert backbone fine-tuned per task. Merges combine the backbones.
#
# This notebook plots the committed results of `benchmarks/merge_suite.py` (seeds 0, 1, 2,
# plus seeds 7 and 13 that nothing was tuned on): it runs in seconds and trains nothing.
#
# AdaMerging++ (`adamerging_ties_*`) starts from the TIES merge picked on validation (its
# merge function and `lam`) and learns the coefficients of TIES's trimmed, sign-elected
# vectors by entropy minimisation; plain AdaMerging (`adamerging_task/layer`) starts at 0.3 on
# the raw task vectors, as FusionBench.

# %%
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np

import jaxparams

RES = pathlib.Path(jaxparams.__file__).resolve().parents[1] / "benchmarks" / "results"
runs = {s: json.loads((RES / f"merge_suite_s{s}.json").read_text()) for s in (0, 1, 2)
        if (RES / f"merge_suite_s{s}.json").exists()}


def sd(a):
  return float(np.std(a, ddof=1)) if len(a) > 1 else 0.0


held_out = {s: json.loads((RES / f"merge_suite_s{s}.json").read_text()) for s in (7, 13)
            if (RES / f"merge_suite_s{s}.json").exists()}
# Seeds 1 and 2 ran the core rows only (`--core`); the black-box searches ran on seed 0.
methods = [m for m in runs[0] if not m.startswith("_") and all(m in r for r in runs.values())]
acc = {m: np.array([100 * runs[s][m]["average"] for s in runs]) for m in methods}
print(f"{'method':30s} {'mean':>6s} {'sd':>5s}   per seed {'/'.join(map(str, runs))}"
      + (f"   held out {'/'.join(map(str, held_out))}" if held_out else ""))
for m in methods:
  a = acc[m]
  print(f"{m:30s} {a.mean():6.1f} {sd(a):5.1f}   " + " / ".join(f"{v:.1f}" for v in a)
        + "   " + " / ".join(f"{100 * r[m]['average']:.1f}" for r in held_out.values()
                             if m in r))
print("\nseed 0 only (black-box searches; evaluations of the validation error):")
for m in ("cmaes_task", "cmaes_layer", "m2n2"):
  if m in runs[0]:
    print(f"{m:30s} {100 * runs[0][m]['average']:6.1f}   {runs[0][m]['evaluations']} evaluations")

# %% [markdown]
# ## The table against FusionBench's ViT-B/32 (8 tasks)
#
# Mean +- sd over the three seeds; FusionBench's numbers as black ticks. Pretrained < simple
# average < task arithmetic < TIES and Fisher < RegMean, experts above all, as in the field.

# %%
FB = {"pretrained": 48.2, "simple_average": 66.5, "task_arithmetic": 68.0, "ties": 72.2,
      "fisher": 70.6, "regmean": 82.4, "adamerging_task": 68.7, "adamerging_layer": 82.6,
      "adamerging_ties_task": 70.6, "adamerging_ties_layer": 83.4, "expert": 90.3}
show = [m for m in ("pretrained", "simple_average", "task_arithmetic", "ties", "fisher",
                    "regmean", "adamerging_task", "adamerging_layer", "adamerging_ties_task",
                    "adamerging_ties_layer", "expert") if m in acc]
fig, ax = plt.subplots(figsize=(9, 3.8))
x = np.arange(len(show))
ax.bar(x, [acc[m].mean() for m in show], yerr=[sd(acc[m]) for m in show], capsize=3,
       color=["C7" if m in ("pretrained", "expert") else "C0" for m in show])
ax.scatter([i for i, m in enumerate(show) if m in FB], [FB[m] for m in show if m in FB],
           marker="_", s=300, color="k", label="FusionBench ViT-B/32")
ax.set_xticks(x, show, rotation=40, ha="right"); ax.set_ylabel("mean accuracy %")
ax.set_ylim(40, 100); ax.legend(loc="upper left"); fig.tight_layout(); plt.show()

# %% [markdown]
# ## AdaMerging: entropy against accuracy
#
# Left: along task arithmetic's `lam` (seed 0), AdaMerging's loss (summed entropy) and the
# accuracy it should raise. Right: test accuracy along each AdaMerging run.

# %%
ad = runs[0]["_adamerging"]
sw = np.array(ad["sweep"])
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
a1.plot(sw[:, 0], sw[:, 1], "o-", label="summed entropy")
a1.set_xlabel("task arithmetic lam"); a1.set_ylabel("summed entropy")
b1 = a1.twinx(); b1.plot(sw[:, 0], 100 * sw[:, 2], "s-", color="C1")
b1.set_ylabel("mean test accuracy %", color="C1")
for name, tr in ad["trace"].items():
  a2.plot([t["step"] for t in tr], [100 * t["accuracy"] for t in tr], label=name)
a2.axhline(acc["task_arithmetic"][0], color="k", ls="--", lw=1, label="task arithmetic")
a2.set_xlabel("Adam step"); a2.set_ylabel("mean test accuracy %"); a2.legend(fontsize=7)
fig.tight_layout(); plt.show()

# %% [markdown]
# ## MAP: the surrogate's Pareto front against the exact front of a dense grid (two tasks)

# %%
mp = runs[0]["_map"]
exact, pred = np.array(mp["exact"]), np.array(mp["pred"])


def front(p):
  ge = np.all(p[None] >= p[:, None], -1) & np.any(p[None] > p[:, None], -1)
  return ~ge.any(1)


fe, fs = front(exact), front(pred)
print(f"{mp['samples']} evaluated merges vs {mp['grid']}-point grid: surrogate MAE "
      f"{mp['mae']:.3f}; hypervolume exact {mp['hv_exact']:.4f}, at the surrogate's front "
      f"{mp['hv_surrogate']:.4f}")
fig, ax = plt.subplots(figsize=(5, 4))
ax.scatter(100 * exact[:, 0], 100 * exact[:, 1], s=4, c="0.8", label="grid merges")
ax.scatter(100 * exact[fe, 0], 100 * exact[fe, 1], s=14, label="exact front")
ax.scatter(100 * exact[fs, 0], 100 * exact[fs, 1], s=14, marker="x",
           label="surrogate front (true accuracy)")
ax.set_xlabel(f"{mp['tasks'][0]} accuracy %"); ax.set_ylabel(f"{mp['tasks'][1]} accuracy %")
ax.legend(fontsize=8); fig.tight_layout(); plt.show()
