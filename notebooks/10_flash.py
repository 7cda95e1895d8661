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
# # LLM in a flash: a model twice its memory budget, run from disk
#
# `benchmarks/flash.py` trains a small byte-level Llama on real text, relufies it, trains
# low-rank predictors of its active FFN neurons, grows it to >= 0.5B parameters with
# Net2WiderNet (`jaxparams.scale.widen_llama_hidden`, residual stream 128 -> 1024, so that a
# neuron's bundle is 12 KiB as in the paper's models; then `jaxparams.scale.widen_llama_ffn`,
# FFN 512 -> 40,960: every new neuron copies a trained one, so the sparsity pattern is the
# trained model's) and runs `jaxparams flash run` at a memory budget of half the model, page
# cache dropped, in four settings:
#
# * **naive**: each layer's FFN read whole when needed;
# * **predictor**: only the neurons the predictor marks active, reloaded every token;
# * **windowing**: neurons active in the last 5 tokens stay; only the increment is read;
# * **bundled**: windowing plus row-column bundling (one read per run of neurons instead of three).
#
# This notebook plots the committed results (`benchmarks/results/flash.json`).

# %%
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np

import jaxparams as jp

results = pathlib.Path(jp.__file__).resolve().parents[1] / "benchmarks" / "results"
r = json.loads((results / "flash.json").read_text())
names = [n for n in ["naive", "predictor", "windowing", "bundled"] if n in r["settings"]]
s = [r["settings"][n] for n in names]
print(f"model: {r['model']['params'] / 1e6:.0f}M parameters, grown from "
      f"{r['model']['grown_from_params'] / 1e6:.2f}M ({r['date']}, {r['machine']})")
for n, v in zip(names, s):
  print(f"{n:10s} {v['tokens_per_s']:7.2f} tok/s  {100 * v['bytes_read_fraction_of_ffn']:6.2f}% of "
        f"the FFN read per token  {v['read_calls_per_token']:8.0f} calls  chunk "
        f"{v['avg_chunk_bytes'] / 1024:6.1f} KiB")
print("oracle max |logit diff| vs dense:", r["oracle_max_abs_diff"])
print("perplexity dense -> learned predictors:", r["perplexity"]["dense"], "->",
      r["perplexity"]["learned"])

# %%
fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
x = np.arange(len(names))
ax[0].bar(x, [v["bytes_read_per_token"] / 1e6 for v in s], color="C0")
ax[0].set_yscale("log")
ax[0].set_ylabel("MB read per token (log)")
ax[0].set_title("bytes read per token")
ax[1].bar(x, [v["tokens_per_s"] for v in s], color="C1")
ax[1].set_ylabel("tokens / s")
ax[1].set_title("speed (budget = half the model)")
for i, v in enumerate(s):
  ax[1].text(i, v["tokens_per_s"], f"{v['tokens_per_s'] / s[0]['tokens_per_s']:.1f}x",
             ha="center", va="bottom")
parts = ["io_s_per_token", "mem_s_per_token", "compute_s_per_token"]
bottom = np.zeros(len(names))
for j, p in enumerate(parts):
  val = np.array([v[p] for v in s])
  ax[2].bar(x, val, bottom=bottom, label=p.split("_")[0], color=f"C{j + 2}")
  bottom += val
ax[2].set_yscale("log")
ax[2].set_ylabel("seconds per token (log)")
ax[2].set_title("time split")
ax[2].legend()
for a in ax:
  a.set_xticks(x, names)
fig.tight_layout()

# %% [markdown]
# Sparsity per layer of the trained ReLU model on held-out text, the predictors' recall and
# precision, and the check that growth preserved the activation pattern (active fraction of the
# small model vs the grown one on the same tokens).

# %%
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
layers = np.arange(len(r["sparsity_per_layer"]))
ax[0].bar(layers - 0.2, r["sparsity_per_layer"], 0.4, label="sparsity (held-out)")
ax[0].bar(layers + 0.2, [m["recall"] for m in r["predictor_metrics"]], 0.4, label="recall")
ax[0].plot(layers, [m["precision"] for m in r["predictor_metrics"]], "ko-", label="precision")
ax[0].set_xlabel("layer")
ax[0].set_ylim(0, 1.05)
ax[0].legend(loc="lower right")
chk = r["sparsity_check"]
ax[1].plot(chk["small_model_active_fraction"], "o-", label="small model")
ax[1].plot(chk["grown_model_active_fraction"], "x--", label="grown model (runtime)")
ax[1].set_xlabel("layer")
ax[1].set_ylabel("active fraction")
ax[1].legend()
fig.tight_layout()
