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
# # StreamAdapter: demonstrations absorbed into the weights
#
# StreamAdapter (Muhtar et al., arXiv 2411.09289) reads the key/value states of in-context
# demonstrations, summarises them chunk by chunk with learnable queries and a gated recurrence
# into a fixed-size state per layer, and maps that state to a low-rank update of the model's own
# matrices. The query then runs alone: its cost does not grow with the number of demonstrations.
#
# This notebook plots the committed results of `benchmarks/streamadapter.py` at the full config
# (`benchmarks/results/streamadapter_full.json`: a hidden-64 Llama that learned random symbol
# mappings in context nearly as well as the Bayes-optimal learner; 256 held-out tasks; k = 1..32
# demonstrations): accuracy of zero-shot, ICL, StreamAdapter and LoRA test-time training, and
# the per-query cost (XLA FLOPs and CPU wall time) of ICL and StreamAdapter. Nothing is trained
# here; `streamadapter.json` holds the `--quick` run.

# %%
import json
import pathlib

import matplotlib.pyplot as plt

import jaxparams

path = pathlib.Path(jaxparams.__file__).resolve().parents[1] / "benchmarks" / "results" / "streamadapter_full.json"
res = json.loads(path.read_text())
ks = res["k"]
print("k            ", ks)
for name in ("icl", "streamadapter", "lora_ttt", "ideal_icl"):
  print(f"{name:13s}", [round(a, 3) for a in res[name]])
print("zero-shot    ", round(res["zero_shot"], 3))
print("base ICL before the adapter existed:", [round(a, 3) for a in res["base_icl_before_adapter"]["icl"]])

# %% [markdown]
# ## Accuracy against the number of demonstrations

# %%
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(ks, res["ideal_icl"], "k:", label="Bayes-optimal learner")
ax.plot(ks, res["icl"], "o-", label="ICL (demonstrations in the prompt)")
ax.plot(ks, res["streamadapter"], "s-", label="StreamAdapter (query alone)")
ax.plot(ks, res["lora_ttt"], "^-", label="LoRA test-time training")
ax.axhline(res["zero_shot"], color="gray", lw=1, label="zero-shot")
ax.set_xscale("log", base=2)
ax.set_xlabel("demonstrations k")
ax.set_ylabel("held-out accuracy")
ax.legend(fontsize=8)
ax.set_title("held-out tasks")

# %% [markdown]
# ## Cost per query
#
# ICL processes the whole prompt for every query; StreamAdapter runs the query alone with a
# rank-M update through the `dot=` injection point. The one-time cost of absorbing a context is
# shown separately (per context, amortised over all the queries that follow).

# %%
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
a1.plot(ks, [f / 1e3 for f in res["icl_flops_per_query"]], "o-", label="ICL")
a1.plot(ks, [f / 1e3 for f in res["streamadapter_flops_per_query"]], "s-", label="StreamAdapter")
a1.plot(ks, [f / 1e3 for f in res["absorb_flops_per_context"]], "x--", label="absorb (per context)")
a1.set_xscale("log", base=2)
a1.set_yscale("log")
a1.set_xlabel("demonstrations k")
a1.set_ylabel("kFLOPs (XLA cost analysis)")
a1.legend(fontsize=8)
a2.plot(ks, res["icl_ms_per_query"], "o-", label="ICL")
a2.plot(ks, res["streamadapter_ms_per_query"], "s-", label="StreamAdapter")
a2.set_xscale("log", base=2)
a2.set_xlabel("demonstrations k")
a2.set_ylabel("ms per query (CPU)")
a2.legend(fontsize=8)
