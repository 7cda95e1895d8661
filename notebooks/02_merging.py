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
# # Merging digit experts
#
# A small MLP base is trained briefly on scikit-learn's digits; three experts are fine-tuned from
# it on disjoint digit subsets (0-3, 4-6, 7-9) and forget the rest. We merge them with several
# mergekit methods through the tree API (`jp.merge.<method>`, the same per-tensor math as
# `jaxparams merge RECIPE.yml`), then sweep a whole grid of task-arithmetic coefficients in
# **one `jax.vmap` call**: every merge and every evaluation of the grid in one compiled program.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxparams as jp
from jaxparams.demo.merge_digits import TASKS, accuracies, digits_setup, merged_models

setup = digits_setup(seed=0)
base, experts = setup["base"], setup["experts"]
jp.tree.summary(base)

# %% [markdown]
# ## Experts alone and merged

# %%
rows = {"base": accuracies(setup, base)}
rows.update({f"expert {k}": accuracies(setup, p) for k, p in zip(TASKS, experts)})
rows.update({k: accuracies(setup, p) for k, p in merged_models(setup).items()})
rows["slerp(expert 0-3, expert 4-6, t=0.5)"] = accuracies(
    setup, jp.merge.slerp(experts[0], experts[1], t=0.5))
rows["breadcrumbs (density=0.5)"] = accuracies(
    setup, jp.merge.breadcrumbs(base, experts, weights=[0.6] * 3, density=0.5, gamma=0.01))
print(f"{'model':40s}" + "".join(f"{k:>8s}" for k in list(TASKS) + ["avg"]))
for name, acc in rows.items():
  print(f"{name:40s}" + "".join(f"{100 * acc[k]:8.1f}" for k in list(TASKS) + ["avg"]))

# %% [markdown]
# ## A grid of task-arithmetic coefficients in one vmapped call
#
# `theta(c) = base + sum_i c_i (expert_i - base)`. The coefficients are array arguments, so
# `jax.vmap` evaluates the merge *and* the per-task accuracy for every coefficient vector at once:
# a 1-D sweep of a shared coefficient and a 2-D grid over the coefficients of the first two experts
# (the third fixed at 0.5), 31 + 21 x 21 = 472 merged models.

# %%
x_test, y_test = jnp.asarray(setup["x_test"]), jnp.asarray(setup["y_test"])
masks = jnp.stack([jnp.isin(y_test, jnp.asarray(d)) for d in TASKS.values()])  # [tasks, n]


def per_task_accuracy(coeffs):
  params = jp.merge.task_arithmetic(base, experts, weights=coeffs)
  pred = jnp.argmax(setup["apply"]({"params": params}, x_test), axis=-1)
  correct = (pred == y_test)[None, :] & masks
  return correct.sum(1) / masks.sum(1)


shared = jnp.linspace(0.0, 1.5, 31)
ca, cb = jnp.meshgrid(jnp.linspace(0.0, 1.5, 21), jnp.linspace(0.0, 1.5, 21), indexing="ij")
coeffs = jnp.concatenate([
    jnp.stack([shared] * 3, axis=1),
    jnp.stack([ca.ravel(), cb.ravel(), jnp.full(ca.size, 0.5)], axis=1),
])
t0 = time.perf_counter()
acc = jax.jit(jax.vmap(per_task_accuracy))(coeffs)  # [472, 3]: one compiled call
acc.block_until_ready()
print(f"{coeffs.shape[0]} merges + evaluations in {time.perf_counter() - t0:.2f} s (incl. compile)")
acc_1d, acc_2d = acc[: shared.size], acc[shared.size:].reshape(ca.shape + (3,))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for i, name in enumerate(TASKS):
  ax1.plot(shared, 100 * acc_1d[:, i], label=f"digits {name}")
ax1.plot(shared, 100 * acc_1d.mean(1), "k--", label="average")
ax1.set_xlabel("shared task-arithmetic coefficient c (all three experts)")
ax1.set_ylabel("accuracy (%)")
ax1.legend()
im = ax2.imshow(100 * acc_2d.mean(-1).T, origin="lower", extent=[0, 1.5, 0, 1.5], aspect="auto")
ax2.set_xlabel("c (expert 0-3)")
ax2.set_ylabel("c (expert 4-6)")
ax2.set_title("average accuracy, c (expert 7-9) = 0.5")
fig.colorbar(im, ax=ax2, label="%")
plt.tight_layout()
plt.show()

best = int(jnp.argmax(acc.mean(1)))
print("best coefficients on the grid:", np.round(np.asarray(coeffs[best]), 2),
      f"average accuracy {100 * float(acc[best].mean()):.1f}%")

# %% [markdown]
# The same merge from a recipe on checkpoints: `jaxparams merge ties.yml OUT` streams an HF
# safetensors checkpoint tensor by tensor with exactly these per-tensor functions
# (see `jaxparams.merge.stream.merge_checkpoints`).
