"""Memory of one training step: AdamW (first order) vs MeZO vs inference, and ZO2 streaming.

For Llama byte LMs of growing depth, XLA's compiled memory analysis of one jitted step on one CPU
device: arguments (params, optimizer state, batch) and temporaries (activations kept for the
backward pass, gradients, perturbed copies). The ZO2 driver's peak live device bytes (blocks
streamed from host memory) is measured over two real steps. Writes
``benchmarks/results/train_memory.md``.
"""

import datetime
import pathlib
import platform

import jax
import numpy as np
import optax

from jaxparams.models import Llama, LlamaConfig
from jaxparams.train import zo, zo2


def main():
  rows = []
  for layers in (2, 8):
    cfg = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=1024,
                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4)
    batch = np.random.default_rng(0).integers(0, 256, (16, 129)).astype(np.int32)
    params = jax.eval_shape(lambda k: Llama(cfg).init(k, batch[:, :-1])["params"],
                            jax.random.key(0))

    def loss_fn(p, b):
      logits = Llama(cfg).apply({"params": p}, b[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, b[:, 1:]).mean()

    adam = optax.adamw(1e-3)

    def adam_step(p, s, b):
      g = jax.grad(loss_fn)(p, b)
      u, s = adam.update(g, s, p)
      return optax.apply_updates(p, u), s

    def mezo_step(p, b, key):
      return zo.mezo_step(loss_fn, p, key, b, lr=1e-3)[0]

    def mem(fn, *args, donate=()):
      m = jax.jit(fn, donate_argnums=donate).lower(*args).compile().memory_analysis()
      return m.argument_size_in_bytes, m.temp_size_in_bytes

    n_params = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(params))
    res = {"inference": mem(loss_fn, params, batch),
           "AdamW step": mem(adam_step, params, jax.eval_shape(adam.init, params), batch,
                             donate=(0, 1)),
           "MeZO step": mem(mezo_step, params, batch, jax.random.key(0), donate=(0,))}
    real = jax.jit(lambda k: Llama(cfg).init(k, batch[:, :-1])["params"])(jax.random.key(0))
    driver = zo2.ZO2(zo2.llama_block_model(cfg), real)
    driver.peak_device_bytes = 0
    for s in range(2):
      driver.step(batch, jax.random.key(s), 1e-3)
    res["ZO2 step (peak live)"] = (0, driver.peak_device_bytes)
    for name, (args, temp) in res.items():
      rows.append((layers, n_params, name, args, temp))
  lines = [f"# Step memory: first order vs zeroth order ({datetime.date.today()}, "
           f"{platform.machine()} CPU, XLA memory analysis)", "",
           "Llama byte LM (hidden 256, FFN 1024), batch 16 x 128. Arguments: params + optimizer "
           "state + batch; temporaries: what the step allocates besides them. ZO2: peak bytes of "
           "the device arrays the driver holds during a step (embedding, head, 3 streamed "
           "blocks, both passes' activations), not counting the temporaries of the jitted "
           "per-block pass (about one perturbed block + activations).", "",
           "| layers | params (MB) | step | arguments (MB) | temporaries (MB) | total (MB) |",
           "|---|---|---|---|---|---|"]
  for layers, n_params, name, args, temp in rows:
    lines.append(f"| {layers} | {n_params / 1e6:.1f} | {name} | {args / 1e6:.1f} | "
                 f"{temp / 1e6:.1f} | {(args + temp) / 1e6:.1f} |")
  out = pathlib.Path(__file__).parent / "results" / "train_memory.md"
  out.write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
