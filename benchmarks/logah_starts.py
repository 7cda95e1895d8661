"""Which part of a LoGAH prediction helps or slows training (issue 30 diagnosis).

Loads a hypernetwork saved by ``benchmarks/logah.py --workdir DIR`` (``DIR/hypernet_logah``),
predicts one held-out configuration of the ``--medium`` preset and trains mixtures of the
prediction and the model's own random initialisation (3 seeds, vmapped, the benchmark's
optimizer and batches) over a short schedule:

* ``random`` / ``logah``: the two starts themselves;
* ``logah+random_inner`` / ``logah+random_all_2d``: the random init *added* to the predicted
  inner matrices (or to every 2-D tensor): full rank on top of the rank-``r`` prediction;
* ``logah_random_embed_head``: the prediction with random embedding and LM head;
* ``random_logah_embed_head`` / ``random_logah_norms``: random init with the predicted
  embedding and head (or only the predicted norm scales).

  python benchmarks/logah.py --medium --out /tmp/logah.json --workdir /tmp/logah_work
  python benchmarks/logah_starts.py --hypernet /tmp/logah_work/hypernet_logah --out OUT.json

Writes only ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logah  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxparams import predict  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxparams import tree as jt  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxparams.calib import corpus  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxparams.models import model_for_config  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hypernet", required=True, help="a saved LoGAH hypernetwork folder")
  ap.add_argument("--config", default="llama-w64-d3", help="a held-out config of --medium")
  ap.add_argument("--steps", default="0,100,500", help="evaluation steps (last = schedule length)")
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  s = dict(logah.MEDIUM, steps=tuple(int(x) for x in args.steps.split(",")))
  if args.config not in s["heldout"]:
    ap.error(f"unknown --config {args.config!r}; valid: {sorted(s['heldout'])}")
  t0, c0 = time.time(), time.process_time()
  train_tok = predict.byte_tokens(corpus.docstring_sentences())
  eval_b = logah.eval_batches(predict.byte_tokens(corpus.reference_sentences()), 16, s["seq"])
  st, d, w, h, f, kv = s["heldout"][args.config]
  cfg = predict.make_config(st, depth=d, width=w, heads=h, ffn=f, kv_heads=kv)
  module = model_for_config(cfg)
  rnd = [module.init(jax.random.key(k), jnp.zeros((1, 4), jnp.int32))["params"]
         for k in range(s["seeds"])]
  pred = predict.params(predict.load(args.hypernet), cfg)
  fp = jt.flatten(pred)
  emb = lambda k: "embed" in k or "lm_head" in k
  inner = lambda k: fp[k].ndim == 2 and not emb(k)

  def mix(fn):  # fn(path, random leaf, predicted leaf) per seed
    return [jt.unflatten({k: fn(k, a, fp[k]) for k, a in jt.flatten(r).items()}) for r in rnd]

  starts = {
      "random": rnd,
      "logah": [pred] * s["seeds"],
      "logah+random_inner": mix(lambda k, a, b: b + a if inner(k) else b),
      "logah+random_all_2d": mix(lambda k, a, b: b + a if b.ndim == 2 else b),
      "logah_random_embed_head": mix(lambda k, a, b: a if emb(k) else b),
      "random_logah_embed_head": mix(lambda k, a, b: b if emb(k) else a),
      "random_logah_norms": mix(lambda k, a, b: b if "norm" in k else a),
  }
  curves = logah.train_curves(starts, module, train_tok, eval_b, s)
  ranks = sorted({int(np.linalg.matrix_rank(np.asarray(v), tol=1e-6 * float(np.abs(v).max())))
                  for v in fp.values() if v.ndim == 2})
  out = {"config": args.config, "steps": list(s["steps"]),
         "loss": {k: [float(np.mean(v)) for v in c] for k, c in curves.items()},
         "per_seed": curves, "predicted_matrix_ranks": ranks,
         "meta": {"hypernet": os.path.abspath(args.hypernet), "wall_s": time.time() - t0,
                  "cpu_s": time.process_time() - c0,
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}}
  with open(args.out, "w", encoding="utf-8") as fh:
    json.dump(out, fh, indent=1)
  for k, v in out["loss"].items():
    print(f"{k:26s} " + " ".join(f"{x:.3f}" for x in v))
  return 0


if __name__ == "__main__":
  sys.exit(main())
