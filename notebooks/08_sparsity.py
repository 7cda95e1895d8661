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

# %% [markdown]
# One-shot (not sequential) calibration needs the layers' input statistics once: one forward
# pass gives X^T X of every Linear, and each calibrated method and level reuses it (what
# `prune_model(..., sequential=False)` computes, bit for bit, in one call per level).

# %%
levels = [0.3, 0.5, 0.7]
stats = calib.collect_stats(module, params, batches)   # {kernel path: input statistics}
curves = {}
for method in ("magnitude", "wanda", "sparsegpt"):
  curves[method] = []
  for s in levels:
    pruned, _ = jp.prune.prune_tree(params, method, sparsity=s,
                                    stats=None if method == "magnitude" else stats)
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

# %% [markdown]
# ## RF8: a quantizer record and `QArray` kind
#
# RF8 rounds each weight to at most two signed powers of two (7 significands per binade) and stores
# one byte: sign + 7-bit magnitude index over 18 binades below the channel's largest, with a
# power-of-two scale per output channel, so decoding is exact. Compared with FP8 e4m3 on
# generalized-Gaussian weights: error and entropy-coded size of the 8-bit codes.

# %%
import json
import pathlib

results = pathlib.Path(jp.__file__).resolve().parents[1] / "benchmarks" / "results"
w = jp.prune.gg_sample(jax.random.key(0), (512, 128), nu=1.0, beta=0.02)
qa = jp.quant.quantize_matrix("rf8", w)
exact = np.asarray(qa.dequantize() == jp.prune.rf8_round(w))    # exact on the RF8 values ...
assert (exact | (np.asarray(qa.dequantize()) == 0)).all()        # ... or flushed to 0 (tiny)
print(f"exact: {exact.mean():.6f}, flushed to zero: {1 - exact.mean():.6f}")
priors = json.loads((results / "prune_priors.json").read_text())
synth = priors["rf8_vs_fp8_synthetic"]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
nus = list(synth)
for ax, key, title in ((axes[0], "", "relative L2 error"), (axes[1], "_bits", "bits/weight (entropy)")):
  ax.bar(np.arange(len(nus)) - 0.2, [synth[n]["rf8" + key] for n in nus], 0.4, label="RF8")
  ax.bar(np.arange(len(nus)) + 0.2, [synth[n]["fp8" + key] for n in nus], 0.4, label="FP8 e4m3")
  ax.set_xticks(range(len(nus)), [f"GG nu={n}" for n in nus]); ax.set_title(title); ax.legend()
qa, priors["rf8_vs_fp8_minilm"]

# %% [markdown]
# ## GG initialisation on the small LM, and the GG shapes of the trained Llama
#
# `configs/prune_lm.py:dense,gg_nu=NU` trains the byte-level Llama with every matrix redrawn from a
# GG of shape NU with the variance of the model's own init (`jp.prune.gg_reinit`); curves from
# `benchmarks/prune_gg_lm.py` (same seeds and data order, mean of 2 seeds).

# %%
lm = json.loads((results / "prune_gg_lm.json").read_text())
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"wspace": 0.45})
names = {"0.0": "own init (normal 0.02)", "2.0": "GG nu=2", "1.0": "GG nu=1", "0.5": "GG nu=0.5"}
for nu, c in lm["curves"].items():
  axes[0].plot(c["steps"], c["mean"], label=names[nu])
axes[0].set_xlabel("step"); axes[0].set_ylabel("eval loss"); axes[0].set_ylim(2.0, 3.5)
axes[0].legend(); axes[0].set_title("GG init vs own init")
shapes = lm["gg_shapes"]
leaves = [p for p in shapes["0.0/trained"] if p.endswith("kernel") and "lm_head" not in p]
axes[1].barh(np.arange(len(leaves)) - 0.2, [shapes["0.0/trained"][p] for p in leaves], 0.4,
             label="own init, trained")
axes[1].barh(np.arange(len(leaves)) + 0.2, [shapes["1.0/trained"][p] for p in leaves], 0.4,
             label="GG nu=1 init, trained")
axes[1].set_yticks(range(len(leaves)),
                   [p.replace("/kernel", "").replace("layers_", "L") for p in leaves], fontsize=7)
axes[1].set_xlabel("GG shape (jp.tree.summary)"); axes[1].set_title("fitted shape per matrix")
axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
plt.tight_layout()
{nu: round(c["mean"][-1], 3) for nu, c in lm["curves"].items()}

# %% [markdown]
# ## DeepShape as a fine-tuning penalty: compressibility vs cosine
#
# `jp.prune.deepshape_penalty` (an optax transform) pulls each kernel toward GG(0.8 nu, 0.6 beta)
# during a short self-distillation fine-tune of MiniLM (`benchmarks/prune_deepshape_ft.py`);
# compared with the post-training histogram specification (`jp.prune.deepshape`).

# %%
ft = json.loads((results / "prune_deepshape_ft.json").read_text())
fig, ax = plt.subplots(figsize=(5.5, 3.5))
for r in ft["rows"]:
  ax.scatter(r["bits"], r["cosine"], label=f"{r['run']}" + (f" lam={r['lam']:g}" if r["lam"] == r["lam"] and r["lam"] else ""))
ax.set_xlabel("bits/weight of 8-bit codes (entropy)"); ax.set_ylabel("held-out cosine")
ax.legend(fontsize=6); ax.set_title("DeepShape penalty on MiniLM")
[(r["run"], r["lam"], round(r["bits"], 3), round(r["cosine"], 4)) for r in ft["rows"]]
