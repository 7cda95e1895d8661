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
# # LoGAH: predicting the parameters of wider transformers with a low-rank graph hypernetwork
#
# `jp.predict` reads a model's computation graph (traced from its forward pass), embeds its nodes
# with a Graphormer, and decodes every parameter: LoGAH's low-rank decoder emits factors
# `A, B` per node (`W = A B^T`, any width up to `max_width`), GHN-3's tiled decoder emits one
# fixed tile that is repeated. Both are trained on a GPTS-1K-style dataset of small decoders with
# their language-modelling loss. This notebook plots the committed results of
# `benchmarks/logah.py` (held-out architectures wider and deeper than any in training, trained
# from random init, the tiled prediction and the LoGAH prediction) and shows one traced graph.

# %%
import json
import pathlib

import matplotlib.pyplot as plt

import jaxparams as jp

results = pathlib.Path(jp.__file__).resolve().parents[1] / "benchmarks" / "results"
res = json.loads((results / "logah.json").read_text())
for name, r in res["configs"].items():
  print(f"{name}: width x{r['width_ratio']:.0f} of the widest training architecture; decoder "
        f"params tiled {r['decoder_params']['tiled']:,} vs LoGAH {r['decoder_params']['logah']:,} "
        f"({r['decoder_params']['tiled'] / r['decoder_params']['logah']:.1f}x)")

# %% [markdown]
# ## Evaluation loss of the held-out architectures after ordinary training from each start

# %%
names = list(res["configs"])
fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5))
for ax, name in zip(axes, names):
  r = res["configs"][name]
  for start, style in (("random", "k--"), ("tiled", "C1-o"), ("logah", "C0-o")):
    ax.plot([max(s, 1) for s in r["steps"]], r[start], style, label=start)
  ax.set_xscale("log"); ax.set_xlabel("training steps (0 plotted at 1)")
  ax.set_ylabel("eval loss (nats/byte)"); ax.set_title(name); ax.legend()
fig.tight_layout()

# %% [markdown]
# ## Hypernetwork training (LM loss of the predicted parameters, sampled architectures)

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
for kind, c in res["meta"]["hypernet_loss"].items():
  ax.plot(c["step"], c["loss"], label=kind)
ax.set_xlabel("hypernetwork step"); ax.set_ylabel("LM loss of predicted params"); ax.legend()

# %% [markdown]
# ## A traced graph: nodes are parameterised ops and merges, edges the data flow

# %%
cfg = jp.predict.make_config("gpt2", depth=1, width=16, heads=2, ffn=64)
g = jp.predict.build(cfg)
for i, (t, leaves) in enumerate(zip(g.node_types, g.node_leaves)):
  print(i, t, list(leaves), "<-", [a for a, b in g.edges if b == i])
