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
# # Rotations remove activation outliers (QuaRot, SpinQuant)
#
# all-MiniLM-L6-v2 has a few hidden channels whose activations are ~10-50x larger than the
# rest, shared by every token. Per-token activation quantization (W4A4, W4A8) then spends its
# whole grid on those channels. An orthogonal rotation `x -> x R` (a randomised Hadamard,
# `jaxparams.quant.hadamard.fwht`) spreads each outlier over all channels; the weights absorb
# `R^T` (`jaxparams.quant.rotate`), so in full precision nothing changes.
#
# The data plotted here were computed by `benchmarks/quant_rotation.py --part acts` (32
# sentences through the real MiniLM, inputs of each layer's `query` and FFN `output` Linear,
# before and after the online Hadamard) and `--part minilm` / `--part lm` (quality tables);
# both are committed JSON, so this notebook runs in seconds. A tiny exactness check runs live.

# %%
import json
import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxparams as jp
from jaxparams.quant import hadamard, rotate

RES = pathlib.Path(jp.__file__).resolve().parents[1] / "benchmarks" / "results"
acts = json.loads((RES / "rotation_activations.json").read_text())

# %% [markdown]
# ## Per-channel abs-max before and after the rotation

# %%
layer = "layers_2/attn/query/kernel"
e = acts["layers"][layer]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)
for ax, key in zip(axes, ("before", "after")):
  ax.bar(np.arange(len(e[key]["channel_absmax"])), e[key]["channel_absmax"], width=1.0)
  ax.set_title(f"{layer}: {key} rotation")
  ax.set_xlabel("input channel")
axes[0].set_ylabel("max |x| over tokens")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Outlier statistics and the per-token int4 error, every layer

# %%
names = list(acts["layers"])
short = [n.replace("/kernel", "").replace("layers_", "L") for n in names]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
x = np.arange(len(names))
for key, off in (("before", -0.2), ("after", 0.2)):
  axes[0].bar(x + off, [acts["layers"][n][key]["kurtosis"] for n in names], 0.4, label=key)
  axes[1].bar(x + off, [acts["layers"][n][key]["int4_rel_err"] for n in names], 0.4, label=key)
axes[0].set_yscale("log")
axes[0].set_title("kurtosis of the activations")
axes[1].set_title("relative error of per-token int4 activations")
for ax in axes:
  ax.set_xticks(x, short, rotation=70, fontsize=7)
  ax.legend()
plt.tight_layout()
plt.show()
for n in names:
  b, a = acts["layers"][n]["before"], acts["layers"][n]["after"]
  print(f"{n:28s} kurtosis {b['kurtosis']:8.1f} -> {a['kurtosis']:5.2f}   "
        f"int4 error {b['int4_rel_err']:.3f} -> {a['int4_rel_err']:.3f}")

# %% [markdown]
# ## The rotated model is the same function (live, tiny Llama)

# %%
cfg = jp.models.LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96,
                            num_hidden_layers=2, num_attention_heads=4)
ids = jax.random.randint(jax.random.key(0), (2, 10), 0, 64)
params = jp.models.Llama(cfg).init(jax.random.key(1), ids)["params"]
r = rotate.rotate(params, cfg)
print("online sites:", r.sites)
print("max relative logit difference:", rotate.check_equal(jp.models.Llama(cfg), params, r, ids))
print("Hadamard factor of 48 and 96:", hadamard.split_pow2(48), hadamard.split_pow2(96))

# %% [markdown]
# ## Quality (committed benchmark rows)

# %%
rows_path = RES / "quant_rotation.json"
rows = json.loads(rows_path.read_text()) if rows_path.is_file() else []
mini = [r for r in rows if r.get("model") == "minilm"]
fig, ax = plt.subplots(figsize=(12, 3.8))
labels = [f"{r['method']} W{r['bits']}A{r['act_bits'] or 16}\n{r['rotate'] or 'no rot'}"
          + (f" sq{r['smooth']}" if r.get("smooth") is not None else "")
          + (f" {r['iters']} steps" if r.get("iters") else "") for r in mini]
ax.bar(np.arange(len(mini)), [r["mean_cos"] for r in mini])
ax.set_xticks(np.arange(len(mini)), labels, fontsize=7, rotation=45, ha="right")
if mini:
  ax.set_ylim(min(r["mean_cos"] for r in mini) - 0.01, 1.0)
ax.set_ylabel("mean cosine to fp")
ax.set_title("all-MiniLM-L6-v2, held-out sentences")
plt.tight_layout()
plt.show()
for r in rows:
  print({k: r[k] for k in ("model", "method", "bits", "group_size", "act_bits", "rotate",
                           "smooth", "mean_cos", "ppl") if k in r})
