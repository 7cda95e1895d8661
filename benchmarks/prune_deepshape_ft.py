"""DeepShape as a fine-tuning penalty on all-MiniLM-L6-v2: compressibility vs embedding cosine.

Fine-tunes every Linear kernel of the 6 layers on a self-distillation loss (1 - cosine to the
original model's embeddings of training sentences: the calibration corpus, Python docstrings)
plus ``jaxparams.prune.deepshape_penalty`` (target GG(0.8 nu, 0.6 beta) per kernel, fitted at the
start, applied decoupled after Adam's scaling), for a few penalty strengths. Measures the
entropy-coded size of the kernels' 8-bit codes (``code_entropy``, bits/weight) and the mean cosine
to the original embeddings on held-out sentences (scikit-learn dataset descriptions). Controls:
the penalty without the task loss (pure shrinkage toward the target), and the post-training
histogram specification (``jaxparams.prune.deepshape``, the reference's DeepShape).

Run:  python benchmarks/prune_deepshape_ft.py [--steps 40 --eval 128]
Writes benchmarks/results/prune_deepshape_ft.md (and .json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=40)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--lr", type=float, default=2e-4)
  ap.add_argument("--lams", default="0,3,10,30")
  ap.add_argument("--eval", type=int, default=128)
  args = ap.parse_args(argv)
  import jax
  import jax.numpy as jnp
  import optax

  import jaxparams as jp
  from jaxparams.calib import corpus
  from jaxparams.models.minilm import tokenize
  t0 = time.time()
  module, params, config, tok = model = jp.models.load_minilm()
  train = corpus.docstring_sentences(args.steps * args.batch)
  held = corpus.sklearn_sentences(args.eval)
  ref_eval = jp.models.embed(held, model=model)
  flat = jp.tree.flatten(params)
  kern = sorted(p for p in flat if p.endswith("kernel") and flat[p].ndim == 2 and "layers_" in p)
  where = lambda p, x: p in kern
  batches = []
  for i in range(args.steps):
    b = tokenize(tok, train[i * args.batch:(i + 1) * args.batch])
    b = {k: jnp.asarray(v[:, :64]) for k, v in b.items()}
    batches.append(b)

  def emb(p, b):
    h = module.apply({"params": p}, b["input_ids"], b["attention_mask"], b["token_type_ids"])
    return jp.models.l2_normalize(jp.models.mean_pool(h.astype(jnp.float32), b["attention_mask"]))

  emb_jit = jax.jit(emb)
  refs = [emb_jit(params, b) for b in batches]

  def bits(p):
    f = jp.tree.flatten(p)
    n = sum(f[k].size for k in kern)
    return sum(jp.prune.code_entropy(f[k]) * f[k].size for k in kern) / n

  def evaluate(p):
    e = jp.models.embed(held, model=(module, p, config, tok))
    return float(np.mean(np.sum(e * ref_eval, -1)))

  def finetune(lam, task=True):
    tx = optax.chain(optax.scale_by_adam(), jp.prune.deepshape_penalty(lam, where=where),
                     optax.scale(-args.lr))
    state = tx.init(params)

    def loss(p, b, r):
      return jnp.mean(1.0 - jnp.sum(emb(p, b) * r, -1)) * (1.0 if task else 0.0)

    @jax.jit
    def step(p, s, b, r):
      l, g = jax.value_and_grad(loss)(p, b, r)
      g = jax.tree.map(lambda x, k: x if k else jnp.zeros_like(x), g,
                       jp.tree.unflatten({k: k in kern for k in flat}, params))  # kernels only
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, l

    p = params
    for b, r in zip(batches, refs):
      p, state, _ = step(p, state, b, r)
    return p

  out: dict = {"machine": f"{platform.machine()}, {jax.device_count()} CPU device(s)",
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "jax": jax.__version__, "steps": args.steps, "batch": args.batch, "lr": args.lr,
               "eval_sentences": len(held)}
  rows = [{"run": "original", "lam": 0.0, "bits": bits(params), "cosine": 1.0}]
  for lam in [float(v) for v in args.lams.split(",")]:
    p = finetune(lam)
    rows.append({"run": "fine-tune + penalty" if lam else "fine-tune, no penalty", "lam": lam,
                 "bits": bits(p), "cosine": evaluate(p)})
  lam_c = max(float(v) for v in args.lams.split(","))
  p = finetune(lam_c, task=False)
  rows.append({"run": "penalty only (no task loss)", "lam": lam_c, "bits": bits(p),
               "cosine": evaluate(p)})
  hs = dict(flat)
  for k in kern:
    hs[k] = jp.prune.deepshape(flat[k], adj_minnum=100)
  p = jp.tree.unflatten(hs, params)
  rows.append({"run": "histogram specification (post-training DeepShape)", "lam": float("nan"),
               "bits": bits(p), "cosine": evaluate(p)})
  out["rows"] = rows
  out["seconds"] = time.time() - t0
  res = ROOT / "benchmarks" / "results"
  res.mkdir(parents=True, exist_ok=True)
  (res / "prune_deepshape_ft.json").write_text(json.dumps(out, indent=1))
  md = [f"Measured {out['date']} on {out['machine']} (shared with other jobs), jax {out['jax']}; "
        f"{args.steps} steps of {args.batch} sentences, Adam lr {args.lr}, penalty decoupled; "
        f"cosine on {len(held)} held-out sentences; {out['seconds']:.0f} s in all.", "",
        "| run | lam | bits/weight (8-bit codes, entropy-coded) | held-out cosine |",
        "|---|---:|---:|---:|"]
  lam_txt = lambda v: "" if v != v else f"{v:g}"
  md += [f"| {r['run']} | {lam_txt(r['lam'])} | {r['bits']:.3f} | {r['cosine']:.4f} |"
         for r in rows]
  (res / "prune_deepshape_ft.md").write_text("\n".join(md) + "\n")
  print("\n".join(md))
  return 0


if __name__ == "__main__":
  sys.exit(main())
