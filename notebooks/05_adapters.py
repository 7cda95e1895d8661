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
# # Adapters: LoRA and DoRA as pure tree transforms
#
# An adapter is a pytree addressed like the params (`layers_0/attn/q_proj/kernel -> {a, b,
# scale}`). It runs two equal ways: **merged** (`w + scale * a @ b`, no inference cost) and
# **unmerged** (the model's `dot=` hook computes `x @ w + scale * (x @ a) @ b` without forming
# the product: what training uses). PEFT's adapter folders are read and written exactly.
#
# 1. LoRA and DoRA on the reference Llama: merged == unmerged, a vmapped sweep over the scale.
# 2. PEFT folders in and out.
# 3. Combining adapters: the exact weighted sum vs PEFT's `linear` (which mixes A and B
#    separately) vs a truncated SVD.
# 4. Extracting a LoRA from a full fine-tune (digits): singular-value spectrum of the delta and
#    the extraction error vs rank (Eckart-Young).

# %%
import json
import os
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import jaxparams as jp

TMP = pathlib.Path(os.environ.get("JAXPARAMS_NOTEBOOK_TMP") or tempfile.mkdtemp())

# %% [markdown]
# ## 1. LoRA and DoRA on a small Llama

# %%
cfg = jp.models.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
ids = jnp.arange(16)[None] * 3 % 128
params = jp.models.Llama(cfg).init(jax.random.key(0), ids)["params"]
lora = jp.adapt.init(params, ["**/attn/*_proj/kernel", "**/mlp/*_proj/kernel"], rank=8,
                     alpha=16, key=jax.random.key(1), init_weights=False)
dora = jp.adapt.init(params, "**/attn/[qv]_proj/kernel", rank=4, alpha=8, key=jax.random.key(2),
                     use_dora=True, init_weights=False)
plain, unmerged_model = jp.models.Llama(cfg), jp.models.Llama(cfg, dot=jp.adapt.dot)
for name, ad in (("LoRA", lora), ("DoRA", dora)):
  merged = plain.apply({"params": jp.adapt.merge(params, ad)}, ids)
  unmerged = unmerged_model.apply({"params": jp.adapt.inject(params, ad)}, ids)
  back = jp.adapt.unmerge(jp.adapt.merge(params, ad), ad, norms=jp.adapt.dora_norms(params, ad))
  print(f"{name}: merged vs unmerged logits {float(jnp.abs(merged - unmerged).max()):.2e}; "
        f"merge -> unmerge error {max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params))):.2e}")

# A sweep over the adapter's strength in one compiled call, and its gradient.
logits = lambda w: unmerged_model.apply({"params": jp.adapt.inject(params, lora, weight=w)}, ids)
ws = jnp.linspace(0, 2, 5)
sweep = jax.jit(jax.vmap(logits))(ws)
print("logit norm vs adapter weight:", np.round(np.linalg.norm(sweep.reshape(5, -1), axis=1), 3))
print("d/dw of the last token's logit norm at w=1:",
      float(jax.grad(lambda w: jnp.linalg.norm(logits(w)[0, -1]))(1.0)))

# %% [markdown]
# ## 2. PEFT folders
#
# `save_peft` writes `adapter_config.json` + `adapter_model.safetensors` with PEFT's names and
# orientation (`lora_A.weight [r, in]`, `lora_B.weight [out, r]`), so `PeftModel.from_pretrained`
# loads it on the HF model; `load_peft` reads PEFT's folders back (the tests check both
# directions against PEFT itself).

# %%
ad_dir = TMP / "peft_lora"
jp.adapt.save_peft(lora, cfg, ad_dir, overwrite=True, task_type="CAUSAL_LM")
print(sorted(os.listdir(ad_dir)))
print({k: v for k, v in json.loads((ad_dir / "adapter_config.json").read_text()).items()
       if k in ("r", "lora_alpha", "target_modules", "use_dora")})
with jp.io.open_checkpoint(ad_dir / "adapter_model.safetensors") as r:
  print(r.names()[:2], r.spec(r.names()[0]).shape)
back, _ = jp.adapt.load_peft(ad_dir, cfg)
print("read back identical:", jp.tree.allclose(back, lora, rtol=0))

# %% [markdown]
# ## 3. Combining adapters
#
# PEFT's `linear` combination mixes the A's and the B's separately, so the product has cross terms
# `B_i A_j`: it is not the weighted sum of the deltas. `linear` here is exact (the concatenation,
# rank `r_1 + r_2`); `peft_linear` reproduces PEFT; `svd` truncates the exact sum to a rank
# (Eckart-Young optimal).

# %%
second = jp.adapt.init(params, ["**/attn/*_proj/kernel", "**/mlp/*_proj/kernel"], rank=8,
                       alpha=16, key=jax.random.key(3), init_weights=False)
w = [1.0, -1.0]
path = "layers_0/mlp/up_proj/kernel"
exact = sum(wi * e[path]["scale"] * e[path]["a"] @ e[path]["b"]
            for wi, e in zip(w, map(jp.adapt.entries, (lora, second))))
for ctype, kw in (("linear", {}), ("peft_linear", {}), ("svd", {"svd_rank": 8}),
                  ("svd", {"svd_rank": 12})):
  e = jp.adapt.entries(jp.adapt.combine([lora, second], w, ctype, **kw))[path]
  err = float(jnp.linalg.norm(e["a"] @ e["b"] - exact) / jnp.linalg.norm(exact))
  print(f"{ctype:12s} {str(kw):18s} rank {e['a'].shape[1]:2d}: relative error {err:.3g}")

# %% [markdown]
# ## 4. Extracting a LoRA from a full fine-tune
#
# A digits MLP is fine-tuned *fully* on mirrored digits; the delta of its first layer is not low
# rank, but its spectrum decays fast. The truncated SVD at rank r is the best rank-r
# approximation: its error is exactly the tail of the spectrum.

# %%
from jaxparams.demo.adapters import _data  # noqa: E402

data = _data(0)
mlp = jp.models.MLP(features=(64, 10))
p0 = mlp.init(jax.random.key(0), data["x_train"][:1])["params"]
x, y, xm = map(jnp.asarray, (data["x_train"], data["y_train"], data["xm_train"]))


def fit(p, xs, steps=150):
  opt = optax.adam(1e-2)
  s = opt.init(p)
  loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(
      mlp.apply({"params": q}, xs), y).mean()

  @jax.jit
  def step(q, s):
    g = jax.grad(loss)(q)
    u, s = opt.update(g, s)
    return optax.apply_updates(q, u), s

  for _ in range(steps):
    p, s = step(p, s)
  return p


base = fit(p0, x)
tuned = fit(base, xm)
acc = lambda p: float(jnp.mean(jnp.argmax(mlp.apply({"params": p}, jnp.asarray(data["xm_test"])),
                                          -1) == data["y_test"]))
delta = tuned["layers_0"]["kernel"] - base["layers_0"]["kernel"]
s = np.linalg.svd(np.asarray(delta, np.float64), compute_uv=False)
ranks = [1, 2, 4, 8, 16, 32, 64]
errors, tails, accs = [], [], []
for r in ranks:
  ad, info = jp.adapt.extract_tree(base, tuned, "layers_0/kernel", max_rank=r)
  e = jp.adapt.entries(ad)["layers_0/kernel"]
  errors.append(float(jnp.linalg.norm(delta - e["a"] @ e["b"])))
  tails.append(float(np.sqrt(np.sum(s[r:] ** 2))))
  accs.append(acc(jp.tree.unflatten({**jp.tree.flatten(jp.adapt.merge(base, ad)),
                                     "layers_1/kernel": tuned["layers_1"]["kernel"],
                                     "layers_1/bias": tuned["layers_1"]["bias"],
                                     "layers_0/bias": tuned["layers_0"]["bias"]})))
print(f"mirrored-digit accuracy: base {acc(base):.3f}, full fine-tune {acc(tuned):.3f}")
print("rank:", ranks)
print("extraction error:", np.round(errors, 4))
print("SVD tail        :", np.round(tails, 4))
print("accuracy (rank-r layer 0):", np.round(accs, 3))

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
ax1.semilogy(np.arange(1, len(s) + 1), s, ".-")
ax1.set(title="singular values of the fine-tuning delta (layer 0)", xlabel="k", ylabel="S_k")
ax2.plot(ranks, errors, "o-", label="||delta - B A||_F (extracted)")
ax2.plot(ranks, tails, "x--", label="sqrt(sum_{k>r} S_k^2) (Eckart-Young)")
ax2b = ax2.twinx()
ax2b.plot(ranks, accs, "s:", color="tab:green", label="accuracy")
ax2b.set_ylabel("mirrored-digit accuracy")
ax2.set(xscale="log", xlabel="rank r", ylabel="Frobenius error", title="extraction vs rank")
ax2.legend(loc="center right", fontsize=8)
fig.tight_layout()
plt.show()
