"""Demo step: a LoRA fine-tune on scikit-learn's digits, merged, and extracted back (seconds).

A small MLP is trained on the digits; the task then shifts to *mirrored* digits (each 8x8 image
flipped left-right), where the base model does poorly. A rank-4 LoRA on both Linear kernels is
trained on the mirrored training set (only the adapter's ``a``/``b`` get gradients; the model runs
unmerged through ``dot=jaxparams.adapt.dot``), then merged into the weights (same accuracy, no
extra cost at inference), and extracted back from (base, merged) by truncated SVD: the rank-4
extraction recovers the adapter's delta exactly (its SVD tail is ~0).

Example:
  >>> out = run(None)  # doctest: +SKIP
  >>> out['accuracy']['merged']['mirrored'] > out['accuracy']['base']['mirrored']  # doctest: +SKIP
  True
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["run", "setup"]

RANK = 4


def _data(seed: int = 0) -> dict[str, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(y))
  x, y = x[perm], y[perm]
  n = int(0.7 * len(y))
  flat = lambda im: im.reshape(len(im), -1)
  return {"x_train": flat(x[:n]), "y_train": y[:n], "x_test": flat(x[n:]), "y_test": y[n:],
          "xm_train": flat(x[:n, :, ::-1]), "xm_test": flat(x[n:, :, ::-1])}


def _fit(loss_fn, params, steps: int, lr: float):
  opt = optax.adam(lr)
  state = opt.init(params)

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = opt.update(g, s)
    return optax.apply_updates(p, u), s, loss

  for _ in range(steps):
    params, state, loss = step(params, state)
  return params, float(loss)


def setup(seed: int = 0, base_steps: int = 300, lora_steps: int = 300) -> dict[str, Any]:
  """Trains the base MLP and the LoRA; returns everything the step prints."""
  import jaxparams as jp  # pylint: disable=g-import-not-at-top
  data = _data(seed)
  model = jp.models.MLP(features=(64, 10))
  lora_model = jp.models.MLP(features=(64, 10), dot=jp.adapt.dot)
  params = model.init(jax.random.key(seed), data["x_train"][:1])["params"]

  def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  xt, yt = jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])
  params, _ = _fit(lambda p: xent(model.apply({"params": p}, xt), yt), params, base_steps, 1e-2)
  adapter = jp.adapt.init(params, "**/kernel", rank=RANK, alpha=2 * RANK,
                          key=jax.random.key(seed + 1))
  trainable, frozen = jp.adapt.split_trainable(adapter)
  xm = jnp.asarray(data["xm_train"])

  def lora_loss(tr):
    ad = jp.adapt.full_adapter(tr, frozen)
    return xent(lora_model.apply({"params": jp.adapt.inject(params, ad)}, xm), yt)

  t0 = time.perf_counter()
  trainable, _ = _fit(lora_loss, trainable, lora_steps, 1e-2)
  train_s = time.perf_counter() - t0
  adapter = jp.adapt.full_adapter(trainable, frozen)
  merged = jp.adapt.merge(params, adapter)
  extracted, infos = jp.adapt.extract_tree(params, merged, "**/kernel", max_rank=RANK)
  re_merged = jp.adapt.merge(params, extracted)

  def acc(p, x, y, m=model):
    return float(jnp.mean(jnp.argmax(m.apply({"params": p}, jnp.asarray(x)), -1) == y))

  rows = {}
  for name, p, m in (("base", params, model), ("lora (unmerged)", jp.adapt.inject(params, adapter),
                                                lora_model),
                     ("merged", merged, model), ("extracted, re-merged", re_merged, model)):
    rows[name] = {"original": acc(p, data["x_test"], data["y_test"], m),
                  "mirrored": acc(p, data["xm_test"], data["y_test"], m)}
  n_model = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  n_adapter = sum(int(np.prod(v.shape)) for p, v in jp.tree.flatten(adapter).items()
                  if not p.endswith("/scale"))
  return {"accuracy": rows, "n_model": n_model, "n_adapter": n_adapter, "train_s": train_s,
          "extraction_tail": max(i["tail"] for i in infos.values()),
          "delta_norm": max(float(jnp.linalg.norm(merged_k - params_k)) for merged_k, params_k in
                            zip(jax.tree.leaves(merged), jax.tree.leaves(params)))}


def run(console: Any = None) -> dict[str, Any]:
  """Runs the step and prints a table (``console`` is a ``rich.console.Console`` or None)."""
  out = setup()
  if console is not None:
    from rich.table import Table  # pylint: disable=g-import-not-at-top
    t = Table(title=f"digits MLP, rank-{RANK} LoRA on mirrored digits "
                    f"({out['train_s']:.1f} s of LoRA training)")
    t.add_column("model")
    t.add_column("accuracy, digits", justify="right")
    t.add_column("accuracy, mirrored digits", justify="right")
    for name, r in out["accuracy"].items():
      t.add_row(name, f"{r['original']:.3f}", f"{r['mirrored']:.3f}")
    console.print(t)
    console.print(f"trainable adapter parameters: {out['n_adapter']:,} "
                  f"({100 * out['n_adapter'] / out['n_model']:.1f}% of the model's "
                  f"{out['n_model']:,}); merged: no extra parameters at inference.")
    console.print(f"extracted rank-{RANK} LoRA from (base, merged): SVD tail "
                  f"{out['extraction_tail']:.2e} (delta norm {out['delta_norm']:.3f})")
  return out
