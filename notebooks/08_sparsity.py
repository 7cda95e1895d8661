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
# # Sparsity and weight priors
#
# One-shot pruning of the real all-MiniLM-L6-v2 (magnitude vs Wanda vs SparseGPT), N:M patterns,
# pruning during training as an optax wrapper, and generalized-Gaussian fits of the weights.
# Every method is a transform record (`jp.prune.PRUNERS`), so `prune_tree` (in memory) and
# `prune_checkpoint` / `jaxparams prune` (on disk, streamed) run the same function.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import jaxparams as jp
from jaxparams import calib

model = jp.models.load_minilm()
module, params, config, tok = model
evals = calib.sklearn_sentences(32)
batches = calib.text_batches(tok, calib.docstring_sentences(32), max_length=64, token_type_ids=True)
ref = jp.models.embed(evals, model=model)
jp.prune.PRUNERS.names()

# %% [markdown]
# ## Cosine to the dense model vs sparsity (one-shot, 36 Linear kernels)

# %%
levels = [0.3, 0.5, 0.7]
curves = {}
for method in ("magnitude", "wanda", "sparsegpt"):
  curves[method] = []
  for s in levels:
    if method == "magnitude":
      pruned, _ = jp.prune.prune_tree(params, method, sparsity=s)
    else:
      pruned, _ = jp.prune.prune_model(module, params, batches, method, sparsity=s,
                                       sequential=False)
    emb = jp.models.embed(evals, model=(module, pruned, config, tok))
    curves[method].append(float(np.mean(np.sum(emb * ref, -1))))
fig, ax = plt.subplots(figsize=(5, 3.5))
for method, ys in curves.items():
  ax.plot(levels, ys, marker="o", label=method)
ax.set_xlabel("sparsity"); ax.set_ylabel("mean cosine to dense"); ax.legend()
ax.set_title("all-MiniLM-L6-v2, one-shot pruning")
curves

# %% [markdown]
# ## Pruning while training: masks live in the optimizer state

# %%
x = jax.random.normal(jax.random.key(0), (256, 32))
w_true = jax.random.normal(jax.random.key(1), (32, 8)) * (jnp.arange(32) < 8)[:, None]
y = x @ w_true
p = {"dense": {"kernel": 0.1 * jax.random.normal(jax.random.key(2), (32, 8))}}
loss = lambda p: jnp.mean((x @ p["dense"]["kernel"] - y) ** 2)
sched = jp.prune.PolynomialSchedule(begin_step=0, end_step=200, update_freq=10)
tx = jp.prune.wrap_optax(optax.adam(0.02), {"dense/kernel": 0.75}, schedule=sched)
state = tx.init(p)
hist = []
for t in range(300):
  u, state = tx.update(jax.grad(loss)(p), state, p)
  p = optax.apply_updates(p, u)
  hist.append((float(loss(p)), float(jnp.mean(p["dense"]["kernel"] == 0))))
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.semilogy([h[0] for h in hist], label="loss")
ax2 = ax.twinx(); ax2.plot([h[1] for h in hist], color="C1", label="sparsity")
ax.set_xlabel("step"); ax.set_title("gradual magnitude pruning to 75%")
hist[-1]

# %% [markdown]
# ## Generalized-Gaussian fits over weight histograms

# %%
flat = jp.tree.flatten(params)
names = ["layers_0/attn/query/kernel", "layers_3/mlp/intermediate/kernel",
         "layers_5/mlp/output/kernel"]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for ax, name in zip(axes, names):
  w = np.asarray(flat[name]).ravel()
  nu, beta = jp.prune.fit_gg(w)
  ax.hist(w, bins=200, density=True, alpha=0.6)
  grid = np.linspace(w.min(), w.max(), 400)
  from math import lgamma, exp
  ax.plot(grid, nu / (2 * beta * exp(lgamma(1 / nu))) * np.exp(-(np.abs(grid) / beta) ** nu))
  ax.set_title(f"{name.split('/')[0]} {name.split('/')[-2]}: nu={nu:.2f}")
jp.prune.gg_summary({k: flat[k] for k in names})
