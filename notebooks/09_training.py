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
# # Training that adapts and survives
#
# 1. **MeZO** (zeroth-order SPSA): two forward passes per step, perturbations regenerated from a
#    key, no gradients and no optimizer state, so a step needs about the memory of inference.
#    **ZO2** streams the blocks from host memory so the device holds about two blocks.
# 2. **WTA-CRS**: a Linear whose weight gradient is estimated from a sample of its input rows;
#    unbiased, with less variance than plain column-row sampling.
# 3. **In-memory fault tolerance**: host snapshots with XOR parity over 4 nodes; a lost node's
#    piece is rebuilt exactly.
# 4. **EATA** vs Tent: test-time adaptation of normalisation layers on shifted digits, and what
#    it costs on clean data afterwards.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from jaxparams.models import Llama, LlamaConfig
from jaxparams.train import data, digits, snapshot, wtacrs, zo, zo2

cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2)
corpus = data.load_corpus(max_bytes=200_000)
batch = lambda step: data.train_batch(corpus, step=step, batch_size=8, seq_len=32, seed=0)
eval_batch = data.eval_batch(corpus, batch_size=16, seq_len=32, seed=0)
params0 = Llama(cfg).init(jax.random.key(0), batch(0)[:, :-1])["params"]
n_bytes = lambda t: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(t))


def loss_fn(p, b):
  logits = Llama(cfg).apply({"params": p}, b[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, b[:, 1:]).mean()


# %% [markdown]
# ## 1. MeZO vs AdamW: loss and memory

# %%
adam = optax.adamw(3e-3)


def adam_step(p, s, b):
  loss, g = jax.value_and_grad(loss_fn)(p, b)
  u, s = adam.update(g, s, p)
  return optax.apply_updates(p, u), s, loss


def mezo_step(p, b, key):
  p, m = zo.mezo_step(loss_fn, p, key, b, lr=1e-2, config=zo.ZOConfig(eps=1e-3, n_samples=4))
  return p, m["loss"]


jit_adam = jax.jit(adam_step, donate_argnums=(0, 1))
jit_mezo = jax.jit(mezo_step, donate_argnums=0)
steps = 40
curves = {"AdamW": [], "MeZO": []}
p, s = params0, adam.init(params0)
p = jax.tree.map(jnp.copy, params0)
for i in range(steps):
  p, s, loss = jit_adam(p, s, batch(i))
  curves["AdamW"].append(float(loss))
q = jax.tree.map(jnp.copy, params0)
for i in range(steps):
  q, loss = jit_mezo(q, batch(i), jax.random.key(i))
  curves["MeZO"].append(float(loss))
print({k: f"{v[0]:.3f} -> {np.mean(v[-10:]):.3f}" for k, v in curves.items()})


def step_memory(fn, *args):
  """Compiled memory of one step: arguments (params, state, batch) + temporaries."""
  m = jax.jit(fn).lower(*args).compile().memory_analysis()
  return {"arguments": m.argument_size_in_bytes, "temporaries": m.temp_size_in_bytes}


mem = {"AdamW": step_memory(adam_step, params0, adam.init(params0), batch(0)),
       "MeZO": step_memory(mezo_step, params0, batch(0), jax.random.key(0)),
       "inference": step_memory(loss_fn, params0, batch(0))}
print(f"params {n_bytes(params0) / 1e6:.2f} MB;", {k: {kk: f"{vv / 1e6:.2f} MB" for kk, vv in v.items()}
                                                  for k, v in mem.items()})

fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
for name, c in curves.items():
  ax[0].plot(c, label=name)
ax[0].set_xlabel("step"); ax[0].set_ylabel("train loss (nats/byte)"); ax[0].legend()
names = list(mem)
ax[1].bar(names, [mem[n]["arguments"] / 1e6 for n in names], label="arguments")
ax[1].bar(names, [mem[n]["temporaries"] / 1e6 for n in names],
          bottom=[mem[n]["arguments"] / 1e6 for n in names], label="temporaries")
ax[1].set_ylabel("MB per step (XLA memory analysis)"); ax[1].legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# ## ZO2: the same steps with the blocks in host memory
#
# The driver applies step t-1's update to a block when it is next on the device, runs both
# perturbed passes through it, and copies it back; the trajectory equals eager MeZO.

# %%
driver = zo2.ZO2(zo2.llama_block_model(cfg), jax.device_get(params0),
                 zo.ZOConfig(eps=1e-3, n_samples=4))
zo2_losses = [driver.step(batch(i), jax.random.key(i), 1e-2)["loss"] for i in range(5)]
print("ZO2 losses", np.round(zo2_losses, 4), " eager MeZO", np.round(curves["MeZO"][:5], 4))
print(f"peak device bytes {driver.peak_device_bytes / 1e6:.2f} MB vs all params "
      f"{n_bytes(params0) / 1e6:.2f} MB")

# %% [markdown]
# ## 2. WTA-CRS: unbiased, and less variance than column-row sampling

# %%
r = np.random.default_rng(0)
x = jnp.asarray(r.normal(size=(512, 64)) * (r.pareto(1.5, (512, 1)) + 0.1), jnp.float32)
g = jnp.asarray(r.normal(size=(512, 16)) * (r.pareto(1.5, (512, 1)) + 0.1), jnp.float32)
exact = x.T @ g
keys = jax.random.split(jax.random.key(0), 1000)
draws = {name: jax.lax.map(lambda k, w=wta: wtacrs.estimate_weight_grad(x, g, k, k=153,
                                                                        winner_take_all=w), keys)
         for name, wta in (("WTA-CRS", True), ("CRS", False))}
counts = np.unique(np.geomspace(1, 1000, 16).astype(int))
plt.figure(figsize=(5, 3.2))
for name, d in draws.items():
  cum = np.cumsum(np.asarray(d), axis=0)
  err = [np.linalg.norm(cum[n - 1] / n - exact) / np.linalg.norm(exact) for n in counts]
  plt.loglog(counts, err, "o-", ms=3, label=name)
plt.loglog(counts, err[0] / np.sqrt(counts), "k--", lw=0.8, label="1/sqrt(draws)")
plt.xlabel("draws averaged"); plt.ylabel("rel. error of mean estimate"); plt.legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 3. Host snapshots with XOR parity: lose a node, rebuild it

# %%
snap = snapshot.Snapshotter(n_nodes=4)
snap.snapshot(steps, {"params": p, "opt_state": s, "rng": np.array([0, 60], np.uint32)})
snap.lose(1)
step, state = snap.restore()
same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state["params"]),
                                                jax.tree.leaves(jax.device_get(p))))
print(f"snapshot of step {step}: {snap.bytes_per_node / 1e6:.2f} MB per node; node 1 lost and "
      f"rebuilt; params bit-identical: {same}")
snap.close()

# %% [markdown]
# ## 4. EATA vs Tent on shifted digits

# %%
res = digits.compare_tta(lr=0.3, rounds=1, source_steps=200)
methods = ("source", "tent", "eata")
shifts = list(res["source"]["per_shift"])
fig, ax = plt.subplots(figsize=(9, 3.2))
w = 0.27
for i, m in enumerate(methods):
  ax.bar(np.arange(len(shifts) + 1) + (i - 1) * w,
         [res[m]["per_shift"][s_] for s_ in shifts] + [res[m]["clean_after"]], w, label=m)
ax.set_xticks(np.arange(len(shifts) + 1), [s_.split(":")[1] for s_ in shifts] + ["clean after"])
ax.set_ylabel("accuracy"); ax.legend(); plt.tight_layout(); plt.show()
print({m: (round(res[m]["mean"], 3), round(res[m]["clean_after"], 3)) for m in methods})
