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
# # Editing facts: ROME, MEMIT, AlphaEdit, GRACE and WISE as pure functions
#
# 1. The **closed-form updates** on one kernel: ROME writes `v*` at `k*` exactly; AlphaEdit's
#    update leaves the outputs of preserved keys unchanged.
# 2. An **edit on a Llama** returns `(new_params, delta)`; the delta re-applies bit-identically
#    and rolls back bit-exactly.
# 3. The **facts benchmark** (`benchmarks/edit_facts.py`): efficacy, generalization and locality
#    over the number of sequential edits, per method (read from its committed results). The
#    facts LM stores a subject's facts at the subject's last token (its corpus has profile
#    lines), so keys and targets are read there, as in the reference code.

# %%
import json
import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxparams
from jaxparams.edit import delta, facts, methods, probe, requests, solve, stats, targets
from jaxparams.models import Llama, LlamaConfig

# %% [markdown]
# ## 1. Closed-form updates

# %%
rng = np.random.default_rng(0)
d_k, d_v = 48, 24
k0 = rng.normal(size=(d_k, 32)) @ rng.normal(size=(32, 500))        # preserved keys, rank 32
cov = jnp.asarray(k0 @ k0.T / 500, jnp.float32)
w = jnp.asarray(rng.normal(size=(d_k, d_v)) / 7, jnp.float32)
k_star, v_star = jnp.asarray(rng.normal(size=d_k), jnp.float32), jnp.asarray(rng.normal(size=d_v), jnp.float32)
d = solve.rome_delta(w, cov + 0.1 * jnp.eye(d_k), k_star, k_star, v_star)
print("ROME ||W'k* - v*|| / ||v*|| =", float(jnp.linalg.norm(k_star @ (w + d) - v_star) / jnp.linalg.norm(v_star)))
p = solve.null_space_projector(cov, 2e-2)
keys, resid = jnp.asarray(rng.normal(size=(d_k, 6)), jnp.float32), jnp.asarray(rng.normal(size=(d_v, 6)), jnp.float32)
da = solve.alphaedit_delta(keys, resid, p, jnp.zeros((d_k, d_k)), 10.0)
dm = solve.memit_delta(keys, resid, cov + 0.1 * jnp.eye(d_k), 1.0)
k0j = jnp.asarray(k0, jnp.float32)
for name, dd in (("AlphaEdit", da), ("MEMIT", dm)):
  print(f"{name}: ||Delta K0|| / ||W K0|| =", float(jnp.linalg.norm(k0j.T @ dd) / jnp.linalg.norm(k0j.T @ w)))

# %% [markdown]
# ## 2. An edit on a Llama, its delta, rollback

# %%
fs = facts.load_facts_set()
tok = facts.build_tokenizer(fs)
cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
model = Llama(cfg)
params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
texts = [facts.sentence(pr, f.subject, f.object) for f in fs.facts[:24] for pr in fs.relations[f.relation]]
st = stats.key_stats(model, params, stats.text_batches(tok, texts, seq_len=16), layers=(1,))
req = requests.requests_from_edits(fs)[0]
new, dl = methods.rome(model, params, tok, req, cov=st[1].gram + 1e-3 * jnp.eye(64),
                       where="layers_1/mlp/down_proj/kernel", templates=["{}"],
                       hp=methods.RomeParams(target=targets.TargetParams(v_num_grad_steps=5)))
print(req, "->", list(dl.updates))
same = lambda a, b: all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
print("re-apply bit-identical:", same(delta.apply_delta(params, dl), new),
      "| rollback bit-exact:", same(delta.rollback(new, dl), params))

# %% [markdown]
# ## 3. Sequential edits on the facts LM (from `benchmarks/results/edit_seq.json`)
#
# `benchmarks/edit_facts.py --seq-only` edits in batches, each batch on the params the previous
# one left, and scores every edit made so far after each batch: efficacy (edit prompt),
# generalization (paraphrases), locality (other subjects' facts against the new target,
# CounterFact's neighbourhood score) and the fraction of a fixed set of unedited facts whose
# argmax answer is unchanged. `benchmarks/results/edit_seq.md` explains the settings.

# %%
results = pathlib.Path(jaxparams.__file__).resolve().parents[1] / "benchmarks" / "results"
res_file = next((f for f in (results / "edit_seq.json", results / "edit.json") if f.exists()), None)
if res_file is not None:
  res = json.loads(res_file.read_text())
  seq = {k[:-4]: v["curve"] for k, v in res.items() if k.endswith("_seq")}
  metrics = ("efficacy", "generalization", "locality", "locality_argmax")
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
  for ax, metric in zip(axes, metrics):
    for name, curve in seq.items():
      ax.plot([c["n_edits"] for c in curve], [c[metric] for c in curve], marker="o", label=name)
    ax.set_title(metric); ax.set_xlabel("sequential edits"); ax.set_ylim(-0.02, 1.02)
  axes[0].legend(fontsize=8); plt.tight_layout(); plt.show()
  for name, v in res.items():
    if name.endswith("_seq"):
      print(f"{name[:-4]:10s} {v['setting']}: " + ", ".join(f"{m} {v[m]:.2f}" for m in metrics)
            + f", edit time {v.get('seconds_total', float('nan')):.0f} s")
else:
  print("run benchmarks/edit_facts.py --seq-only to produce", results / "edit_seq.json")

# %% [markdown]
# ## 4. A thousand sequential edits on the 2048-wide facts LM, locality held out
#
# The `xwide` facts LM (keys 2048 wide, so AlphaEdit's null space holds 1,963 directions) edited
# 1,000 times in batches of 100 with the records' defaults. MEMIT and AlphaEdit are scored with
# `--heldout-locality` (locality on never-edited subjects kept out of the key statistics C0);
# GRACE and WISE-Retrieve edit the last layer and need no C0. `benchmarks/RESULTS.md` discusses
# the curves: MEMIT's locality falls, AlphaEdit's falls less, GRACE holds.

# %%
runs = {"MEMIT": "edit_seq_xwide_heldout_memit.json",
        "AlphaEdit": "edit_seq_xwide_heldout_alphaedit.json",
        "AlphaEdit, 100 target steps": "edit_seq_xwide_heldout_alphaedit_z100.json",
        "GRACE (layer 3)": "edit_seq_xwide_grace.json",
        "WISE-Retrieve (layer 3)": "edit_seq_xwide_wise_retrieve.json"}
curves = {}
for label, name in runs.items():
  if (results / name).exists():
    d = json.loads((results / name).read_text())
    curves[label] = next(v["curve"] for k, v in d.items() if k.endswith("_seq"))
if curves:
  metrics = ("efficacy", "generalization", "locality", "locality_argmax")
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
  for ax, metric in zip(axes, metrics):
    for label, curve in curves.items():
      ax.plot([c["n_edits"] for c in curve], [c[metric] for c in curve], marker="o", label=label)
    ax.set_title(metric); ax.set_xlabel("sequential edits"); ax.set_ylim(-0.02, 1.02)
  axes[0].legend(fontsize=8); plt.tight_layout(); plt.show()
  for label, curve in curves.items():
    print(f"{label:28s} after {curve[-1]['n_edits']}: " + ", ".join(
        f"{m} {curve[-1][m]:.2f}" for m in metrics))
else:
  print("run benchmarks/edit_facts.py --seq-only --heldout-locality on the xwide LM first")
