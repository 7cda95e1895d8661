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
# # Growing models without changing what they compute
#
# Growth transforms take `(params, config)` and return a bigger `(params, config)` that computes
# **the same function**, so training continues from where it was instead of restarting.
#
# 1. **Net2Net** on the reference Llama: wider FFN, more attention heads (GQA groups copied
#    whole), extra identity blocks.
# 2. **TokenFormer**: every projection is attention over learnable parameter tokens; growth
#    appends zero-key tokens with τ frozen. The reference code's τ = √n_new variant is shown to
#    change the function.
# 3. The **loss curve across a growth step**: a small TokenFormer trained on the Python standard
#    library's own source text, grown mid-training.

# %%
import inspect
import textwrap
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from jaxparams.models import Llama, LlamaConfig
from jaxparams.scale import net2net, tokenformer as tf


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def random_params(module, *args, std=0.02, seed=0):
  """N(0, std) params of the module's shapes, norm scales 1 (numpy: nothing to compile)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]

  def leaf(path, s):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return jnp.ones(s.shape, s.dtype)
    if "bias" in name:
      return jnp.zeros(s.shape, s.dtype)
    return jnp.asarray(std * rng.normal(size=s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


# %% [markdown]
# ## 1. Net2Net on Llama

# %%
cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12))
params = random_params(Llama(cfg), ids, std=0.2)
forward = lambda c, p: jax.jit(lambda p: Llama(c).apply({"params": p}, ids))(p)
ref = forward(cfg, params)

p1, c1 = net2net.widen_llama_ffn(params, cfg, 96, jax.random.PRNGKey(2))
p2, c2 = net2net.widen_llama_heads(p1, c1, 8, jax.random.PRNGKey(3))
p3, c3 = net2net.deepen_llama(p2, c2, [1, 2])
n_params = lambda p: sum(x.size for x in jax.tree_util.tree_leaves(p))
for name, c, p in [("original", cfg, params), ("FFN 48->96", c1, p1), ("heads 4->8, kv 2->4", c2, p2),
                   ("+2 identity blocks", c3, p3)]:
  print(f"{name:22s} params={n_params(p):6d}  rel. logit change={rel(ref, forward(c, p)):.1e}")

# %% [markdown]
# ## 2. TokenFormer growth: frozen τ is exact, τ = √n_new is not

# %%
tcfg = tf.TokenFormerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, qkv_tokens=32,
                            out_tokens=32, ffn_tokens=128, max_len=64)
x = np.random.default_rng(4).integers(0, 256, (2, 32))
tparams = random_params(tf.TokenFormer(tcfg), x, std=0.2)  # trained-like scale, not the 0.02 init
tf_forward = lambda c, p: jax.jit(lambda p: tf.TokenFormer(c).apply({"params": p}, x))(p)
tref = tf_forward(tcfg, tparams)
add = {"qkv": 32, "out": 32, "ffn": 128}
g_params, g_cfg = tf.grow(tparams, tcfg, add)
r_params, r_cfg = tf.grow(tparams, tcfg, add, rescale_tau=True)
print(f"tokens qkv/out/ffn {tcfg.qkv_tokens}/{tcfg.out_tokens}/{tcfg.ffn_tokens} -> "
      f"{g_cfg.qkv_tokens}/{g_cfg.out_tokens}/{g_cfg.ffn_tokens}")
print(f"frozen tau (ffn tau={g_cfg.tau('ffn'):.2f}):       rel. logit change "
      f"{rel(tref, tf_forward(g_cfg, g_params)):.1e}")
print(f"tau = sqrt(n_new) (ffn tau={r_cfg.tau('ffn'):.2f}): rel. logit change "
      f"{rel(tref, tf_forward(r_cfg, r_params)):.1e}")

# %% [markdown]
# ## 3. Loss across a growth step
#
# Byte-level language modelling on the source of a few standard-library modules (available
# offline with every Python). The small model trains for a while, is grown with `tf.grow`
# (Adam's moments grown with zeros by `tf.grow_optimizer_state`), and training continues. The
# loss on a fixed evaluation batch just before and just after growth is identical.

# %%
corpus = "\n".join(inspect.getsource(m) for m in (textwrap, inspect)).encode()
data = np.frombuffer(corpus, np.uint8).astype(np.int32)
seq, batch = 64, 8
rng = np.random.default_rng(0)


def sample(n):
  starts = rng.integers(0, len(data) - seq - 1, n)
  chunk = np.stack([data[s:s + seq + 1] for s in starts])
  return chunk[:, :-1], chunk[:, 1:]


eval_x, eval_y = sample(16)


def make_step(cfg, opt):
  def loss_fn(p, xb, yb):
    logits = tf.TokenFormer(cfg).apply({"params": p}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  @jax.jit
  def step(p, s, xb, yb):
    loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  return step, jax.jit(loss_fn)


small = tf.TokenFormerConfig(vocab_size=256, d_model=64, n_layers=1, n_heads=4, qkv_tokens=16,
                             out_tokens=16, ffn_tokens=64, max_len=seq)
opt = optax.adam(3e-3)
params = random_params(tf.TokenFormer(small), eval_x, std=small.init_std)
state = opt.init(params)
step, eval_loss = make_step(small, opt)
steps_before, steps_after = 40, 40
history = []
t0 = time.time()
for i in range(steps_before):
  params, state, loss = step(params, state, *sample(batch))
  history.append(float(loss))
before = float(eval_loss(params, eval_x, eval_y))

grow_by = {"qkv": 16, "out": 16, "ffn": 64}
params, big = tf.grow(params, small, grow_by, key=jax.random.PRNGKey(7))
state = tf.grow_optimizer_state(state, small, grow_by)
step, eval_loss = make_step(big, opt)
after = float(eval_loss(params, eval_x, eval_y))
for i in range(steps_after):
  params, state, loss = step(params, state, *sample(batch))
  history.append(float(loss))
print(f"eval loss just before growth {before:.6f}, just after {after:.6f} "
      f"(diff {abs(after - before):.1e}); {time.time() - t0:.1f}s")
assert abs(after - before) <= 1e-5 * abs(before)

# %%
plt.figure(figsize=(6, 3))
plt.plot(history, label="train loss")
plt.axvline(steps_before, color="k", ls="--", label=f"grow: ffn tokens {small.ffn_tokens}->{big.ffn_tokens}")
plt.xlabel("step")
plt.ylabel("cross-entropy (nats/byte)")
plt.legend()
plt.tight_layout()
plt.show()
