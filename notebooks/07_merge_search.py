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
# # Merge search: Fisher, RegMean, AdaMerging, CMA-ES and MAP on a merging suite
#
# A FusionBench-style suite from scikit-learn's digits: one pretrained backbone, tasks that are
# real distribution shifts of the same images (here rotated, inverted, mirrored), a fixed head
# per task, one fine-tuned expert backbone per task. We merge the experts' backbones with
# data-free methods (average, task arithmetic, TIES) and with methods that use data or search:
# Fisher merging, RegMean (Gram matrices from `jaxparams.calib`), AdaMerging (coefficients
# learned by gradient through `jp.merge.task_arithmetic`), CMA-ES (evosax, whole population
# in one vmapped merge+forward). Then MAP: a quadratic surrogate of each task's accuracy over
# the coefficients, its Pareto front against the exact front of a dense vmapped grid.
# (Reduced sizes so that this notebook runs in seconds; `benchmarks/merge_suite.py` runs all
# eight tasks.)

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jaxparams.demo import digits_suite as ds
from jaxparams.merge import learned

suite = ds.build_suite(("rotate", "invert", "mirror"), hidden=(128, 64), pretrain_steps=200,
                       finetune_steps=150, finetune_lr=2e-3)
suite.names

# %% [markdown]
# ## The accuracy table

# %%
table = ds.merge_table(suite, ("pretrained", "experts", "simple_average", "task_arithmetic",
                               "ties", "fisher", "regmean", "adamerging_task",
                               "adamerging_layer", "cmaes_task"),
                       ada_steps=150, cma_generations=20, cma_population=12)
print(f"{'method':18s}" + "".join(f"{n:>9s}" for n in suite.names) + f"{'average':>9s}")
for m, r in table.items():
  print(f"{m:18s}" + "".join(f"{100 * r['acc'][n]:9.1f}" for n in suite.names)
        + f"{100 * r['acc']['average']:9.1f}")

# %% [markdown]
# ## AdaMerging: its loss (entropy) against the accuracy it is meant to raise
#
# On this suite the merged backbones grow confident faster than they grow right: the summed
# entropy of the tasks' predictions falls while test accuracy falls too (see
# `benchmarks/results/merge_suite.md` for the eight-task numbers).

# %%
tr = table["adamerging_task"]["trace"]
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot([t["step"] for t in tr], [t["entropy"] for t in tr], "o-", label="summed entropy")
ax.set_xlabel("Adam step"); ax.set_ylabel("summed entropy")
ax2 = ax.twinx()
ax2.plot([t["step"] for t in tr], [100 * t["accuracy"] for t in tr], "s-", color="C1",
         label="mean test accuracy %")
ax2.set_ylabel("mean test accuracy %"); fig.legend(loc="upper center"); plt.show()

# %% [markdown]
# ## CMA-ES progress: best validation loss per generation

# %%
_, lam, hist = learned.cmaes_search(suite.pretrained, suite.experts, ds.val_loss(suite),
                                    population=12, generations=20, seed=0)
plt.figure(figsize=(5, 3.5))
plt.plot(np.asarray(hist))
plt.xlabel("generation"); plt.ylabel("best summed validation CE"); plt.title("CMA-ES (evosax)")
plt.show()
print("coefficients:", np.round(np.asarray(lam), 3))

# %% [markdown]
# ## MAP: surrogate Pareto front vs the exact front of a dense grid (two tasks)

# %%
pair = ds.DigitsSuite(suite.module, suite.pretrained, suite.experts[:2], suite.tasks[:2])
acc = ds.task_accuracies_fn(pair)
evaluate = jax.jit(jax.vmap(lambda c: acc(learned.taskwise_merge(pair.pretrained,
                                                                pair.experts, c))))
g = np.linspace(0, 1.5, 31, dtype=np.float32)
grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
exact = np.asarray(evaluate(jnp.asarray(grid)))          # 961 merges, one call
c = np.random.default_rng(0).uniform(0, 1.5, (12, 2)).astype(np.float32)
sur = learned.fit_surrogate(c, evaluate(jnp.asarray(c)))  # 12 merges
pred = np.asarray(learned.predict_surrogate(sur, grid))
fe, fs = np.asarray(learned.pareto_mask(exact)), np.asarray(learned.pareto_mask(pred))
print(f"surrogate MAE {np.abs(pred - exact).mean():.4f}, hypervolume exact "
      f"{learned.hypervolume_2d(exact[fe]):.4f}, at surrogate front {learned.hypervolume_2d(exact[fs]):.4f}")
plt.figure(figsize=(5, 4))
plt.scatter(exact[:, 0], exact[:, 1], s=4, c="0.8", label="grid merges")
plt.scatter(exact[fe, 0], exact[fe, 1], s=12, label="exact front")
plt.scatter(exact[fs, 0], exact[fs, 1], s=12, marker="x", label="surrogate front (true acc.)")
plt.xlabel(pair.names[0]); plt.ylabel(pair.names[1]); plt.legend(); plt.show()
