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
# # jaxparams tour: trees, selection and checkpoints
#
# Parameters are pytrees addressed by `/`-joined paths. Every function that takes a subset takes
# the same `where=`: a glob, a regex, ordered first-match rules, a predicate or a mask tree.
# A selector that matches nothing is an error.

# %%
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxparams as jp

params = {"layers": [{"mlp": {"kernel": jnp.ones((4, 8)), "bias": jnp.zeros(8)},
                      "attn": {"kernel": jnp.full((4, 4), 2.0)}} for _ in range(3)],
          "embed": jnp.ones((10, 4))}
list(jp.tree.flatten(params))[:4]

# %%
print(jp.tree.select(params, "layers/*/mlp/kernel"))
print(jp.tree.select(params, re.compile(r"layers/[01]/attn/.*")))
print(jp.tree.resolve_rules(params, [("**/bias", "keep"), ("layers/0/**", "int8"), ("**", "int4")]))
try:
  jp.tree.select(params, "layers/*/mpl/kernel")
except ValueError as e:
  print("error:", e)

# %%
scaled = jp.tree.map(lambda x: 0.5 * x, params, where=lambda path, x: x.ndim == 2 and "attn" in path)
print(jp.tree.diff(params, scaled))
print(jp.tree.summary(jp.tree.cast(scaled, jnp.bfloat16)))

# %% [markdown]
# ## The packaged all-MiniLM-L6-v2, loaded into the Flax BERT
# `from_hf` streams the safetensors one tensor at a time and maps HF names to Flax paths.

# %%
module, mparams, config, tokenizer = jp.models.load_minilm()
s = jp.tree.summary(mparams)
print(f"{len(s.rows)} tensors, {s.params:,} parameters, {jp.tree.human_bytes(s.bytes)}")

sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
emb = jp.models.embed(sentences, model=(module, mparams, config, tokenizer))
print(np.round(emb @ emb.T, 3))

# %% [markdown]
# Round trip through safetensors (HF names) and orbax: both exact.

# %%
tmp = tempfile.mkdtemp(dir=os.environ.get("JAXPARAMS_NOTEBOOK_TMP"))
jp.models.to_hf(mparams, config, os.path.join(tmp, "hf"))
_, back, _ = jp.models.from_hf(os.path.join(tmp, "hf"))
jp.io.save_orbax(mparams, os.path.join(tmp, "orbax"))
restored = jp.io.restore_orbax(os.path.join(tmp, "orbax"), like=mparams)
assert jp.tree.allclose(back, mparams, rtol=0) and jp.tree.allclose(restored, mparams, rtol=0)
print("safetensors and orbax round trips are exact")

# %% [markdown]
# ## Per-layer weight statistics

# %%
rows = [r for r in jp.tree.summary(mparams, where="**/kernel").rows]
layers = sorted({r.path.split("/")[1] for r in rows if r.path.startswith("encoder")} or
                {r.path.split("/")[0] for r in rows})
fig, ax = plt.subplots(figsize=(8, 3))
for kind in sorted({r.path.rsplit("/", 2)[-2] for r in rows}):
  pts = [(i, r.std) for i, r in enumerate(rows) if r.path.rsplit("/", 2)[-2] == kind]
  ax.plot(*zip(*pts), "o", label=kind)
ax.set_xlabel("kernel index (model order)")
ax.set_ylabel("std of weights")
ax.legend(fontsize=7, ncol=3)
plt.tight_layout()
