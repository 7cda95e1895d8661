"""LoGAH vs GHN-3 tiling vs random init: starting wider-than-trained transformers from predictions.

  python benchmarks/logah.py --out OUT.json [--quick] [--workdir DIR]

1. An architecture dataset in GPTS-1K's spirit (``jp.predict.sample_configs``: Llama-style and
   GPT-2-shaped decoders, depth/width/heads/FFN drawn, deep ones narrow) and one byte-level corpus
   (offline prose: standard-library docstrings for training, the Python language reference for
   evaluation; ``jaxparams.calib.corpus``).
2. Two hypernetworks with the same Graphormer encoder, trained the same way on it (LoGAH's
   objective: the LM loss of the predicted parameters): the LoGAH low-rank decoder and the GHN-3
   tiled decoder (tile = the widest training width).
3. Held-out architectures, one 4x wider and deeper than any in training: their evaluation loss
   after 0 / 100 / 500 / 2000 steps of ordinary AdamW training from (a) the project's random
   initialisation (``module.init``), (b) the tiled prediction, (c) the LoGAH prediction; three
   seeds (the random init's key and the batch order; the hypernetworks are trained once), the
   three starts of a seed see the same batches.

Writes ``{"configs": {NAME: {"width_ratio", "steps", "random", "tiled", "logah",
"decoder_params": {"tiled", "logah"}}}, "meta": {...}}`` (losses: means over seeds; per-seed
values, hypernetwork training curves and timings under ``meta``). ``decoder_params`` is each
decoder's size at that width: sized to emit the model's widest matrix without repeats (tiled:
``T = d``, LoGAH: ``ck = d``; same ``hid`` and rank); the sizes of the decoders actually trained
(tile = widest training width) are under ``meta.heldout.NAME.decoder_params_as_trained``.
``--medium`` is the size that was run on the shared 2-core machine (see RESULTS.md). The trained hypernetworks go to
``--workdir`` (default: a temporary folder), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import predict
from jaxparams.calib import corpus
from jaxparams.models import model_for_config

FULL = dict(
    n_archs=300, depth=(1, 3), width=(8, 32), hn_steps=1200, hn_batch=8, hn_seq=64,
    hid=32, layers=3, heads=4, rank=8,
    heldout={  # name: (style, depth, width, heads, ffn, kv_heads)
        "llama-w128-d4": ("llama", 4, 128, 4, 256, 2),
        "gpt2-w64-d5": ("gpt2", 5, 64, 4, 256, 4),
    },
    steps=(0, 100, 500, 2000), batch=8, seq=64, lr=1e-3, seeds=3)
# The size that fits this shared 2-core machine under load (compiles dominate: one per distinct
# architecture, so the dataset repeats few architectures, as GPTS-1K repeats ~80 among 1000).
MEDIUM = dict(
    n_archs=200, depth=(1, 2), width=(8, 16), head_dim=4, ffn_ratios=(4.0,), hn_steps=500,
    hn_batch=8, hn_seq=32, hn_lr=1e-3, hid=16, layers=2, heads=2, rank=4,
    heldout={"llama-w64-d3": ("llama", 3, 64, 16, 256, 16),
             "gpt2-w32-d3": ("gpt2", 3, 32, 8, 128, 8)},
    steps=(0, 100, 500, 2000), batch=4, seq=32, lr=1e-3, seeds=3)
QUICK = dict(
    n_archs=12, depth=(1, 2), width=(8, 16), hn_steps=60, hn_batch=4, hn_seq=32,
    hid=16, layers=2, heads=2, rank=4,
    heldout={"llama-w64-d3": ("llama", 3, 64, 4, 128, 2),
             "gpt2-w32-d3": ("gpt2", 3, 32, 2, 128, 2)},
    steps=(0, 10, 30, 60), batch=4, seq=32, lr=1e-3, seeds=3)


def cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def eval_batches(tokens: np.ndarray, n: int, seq: int) -> np.ndarray:
  rng = np.random.default_rng(123)
  return predict.token_batch(tokens, rng, n, seq)


def train_curves(starts: dict[str, list], module, train_tok, eval_b, s) -> dict[str, list]:
  """Eval loss at ``s['steps']`` for each start (a list of per-seed param trees), vmapped over seeds."""
  total = max(s["steps"])
  tx = predict.optimizer(s["lr"], total, warmup=min(50, total // 10), weight_decay=0.01,
                         grad_clip=1.0)

  def one(params, opt, batch):
    loss, g = jax.value_and_grad(predict.lm_loss)(params, module, batch)
    upd, opt = tx.update(g, opt, params)
    return jax.tree_util.tree_map(jnp.add, params, upd), opt, loss

  step = jax.jit(jax.vmap(one))
  ev = jax.jit(jax.vmap(lambda p: predict.lm_loss(p, module, eval_b)))
  out = {}
  for name, per_seed in starts.items():
    params = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *per_seed)
    opt = jax.vmap(tx.init)(params)
    rngs = [np.random.default_rng(1000 + k) for k in range(s["seeds"])]
    curve = []
    for t in range(total + 1):
      if t in s["steps"]:
        curve.append([float(x) for x in ev(params)])
      if t < total:
        batch = np.stack([predict.token_batch(train_tok, r, s["batch"], s["seq"]) for r in rngs])
        params, opt, _ = step(params, opt, batch)
    out[name] = curve  # [len(steps)][seeds]
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--medium", action="store_true", help="the size run on the shared 2-core VM")
  ap.add_argument("--workdir", default=None, help="where the trained hypernetworks are saved")
  args = ap.parse_args(argv)
  s = QUICK if args.quick else MEDIUM if args.medium else FULL
  t0, c0 = time.time(), cpu_seconds()
  workdir = args.workdir or tempfile.mkdtemp(prefix="logah_bench_")

  train_tok = predict.byte_tokens(corpus.docstring_sentences())
  eval_tok = predict.byte_tokens(corpus.reference_sentences())
  eval_b = eval_batches(eval_tok, 16, s["seq"])
  archs = predict.sample_configs(s["n_archs"], seed=1, depth=s["depth"], width=s["width"],
                                 head_dim=s.get("head_dim"),
                                 ffn_ratios=s.get("ffn_ratios", (2.0, 8 / 3, 4.0)))
  widest = predict.widest(archs)
  log = lambda m: print(f"[{time.time() - t0:7.1f}s] {m}", flush=True)
  log(f"{len(archs)} architectures ({len(set(archs))} distinct), widest {widest}, depth "
      f"{s['depth']}; corpus {len(train_tok)} train / {len(eval_tok)} eval bytes")

  heldout = {k: predict.make_config(st, depth=d, width=w, heads=h, ffn=f, kv_heads=kv)
             for k, (st, d, w, h, f, kv) in s["heldout"].items()}
  max_dim = max(max(c.intermediate_size, c.hidden_size, c.vocab_size)
                for c in list(heldout.values()) + archs)
  seen = predict.seen_sizes(archs)
  hypernets, hn_curves, hn_time = {}, {}, {}
  for kind in ("tiled", "logah"):
    hc = predict.HypernetConfig(decoder=kind, hid=s["hid"], layers=s["layers"], heads=s["heads"],
                                rank=s["rank"], max_width=max_dim, tile=widest,
                                seen=seen)
    hn = predict.init(jax.random.key(0), hc)
    c1, w1 = cpu_seconds(), time.time()
    fc = predict.FitConfig(steps=s["hn_steps"], batch_size=s["hn_batch"], seq_len=s["hn_seq"],
                           lr=s.get("hn_lr", 3e-4),
                           warmup=max(1, s["hn_steps"] // 20), log_every=max(1, s["hn_steps"] // 10))
    hn, hist = predict.fit(hn, archs, train_tok, fc, key=jax.random.key(1),
                           log=lambda r, k=kind: log(f"{k} step {r['step']} loss {r['loss']:.3f}"))
    hn_time[kind] = {"wall_s": time.time() - w1, "cpu_s": cpu_seconds() - c1}
    losses = np.array([r["loss"] for r in hist])
    every = max(1, len(losses) // 60)
    hn_curves[kind] = {"step": list(range(0, len(losses), every)),
                       "loss": [float(losses[i:i + every].mean()) for i in range(0, len(losses), every)]}
    predict.save(hn, os.path.join(workdir, f"hypernet_{kind}"), overwrite=True)
    hypernets[kind] = hn
    log(f"{kind}: decoder {predict.decoder_params(hn):,} params, trained in "
        f"{hn_time[kind]['wall_s']:.0f}s wall / {hn_time[kind]['cpu_s']:.0f}s CPU")

  results, per_seed, run_time = {}, {}, {}
  for name, cfg in heldout.items():
    module = model_for_config(cfg)
    ids = jnp.zeros((1, 4), jnp.int32)
    c1, w1 = cpu_seconds(), time.time()
    starts = {"random": [module.init(jax.random.key(k), ids)["params"] for k in range(s["seeds"])]}
    for kind, hn in hypernets.items():
      p = predict.params(hn, cfg)
      starts[kind] = [p] * s["seeds"]
    curves = train_curves(starts, module, train_tok, eval_b, s)
    run_time[name] = {"wall_s": time.time() - w1, "cpu_s": cpu_seconds() - c1}
    # decoder size each hypernetwork needs to emit this model's widest matrix without repeats
    d = max(max(cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size), 1)
    at_width = {"tiled": predict.decoders.tiled_size(hid=s["hid"], tile=d),
                "logah": predict.decoders.lowrank_size(hid=s["hid"], rank=s["rank"], ck=d)}
    results[name] = {
        "width_ratio": cfg.hidden_size / widest,
        "steps": list(s["steps"]),
        **{k: [float(np.mean(v)) for v in curves[k]] for k in ("random", "tiled", "logah")},
        "decoder_params": at_width,
    }
    per_seed[name] = {"curves": curves, "decoder_params_as_trained": {
                          k: predict.decoder_params(hypernets[k]) for k in ("tiled", "logah")},
                      "depth": cfg.num_hidden_layers, "width": cfg.hidden_size,
                      "ffn": cfg.intermediate_size, "style": s["heldout"][name][0]}
    log(f"{name}: " + json.dumps(results[name]))

  meta = {"quick": bool(args.quick), "settings": {k: (v if k != "heldout" else dict(v))
                                                  for k, v in s.items()},
          "n_archs": len(archs), "n_distinct_archs": len(set(archs)), "widest_train_width": widest,
          "deepest_train_depth": max(c.num_hidden_layers for c in archs),
          "hypernet_loss": hn_curves, "hypernet_time": hn_time, "heldout": per_seed,
          "heldout_time": run_time, "wall_s": time.time() - t0, "cpu_s": cpu_seconds() - c0,
          "jax": jax.__version__, "platform": jax.default_backend(), "cores": os.cpu_count(),
          "workdir": workdir, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump({"configs": results, "meta": meta}, f, indent=1)
  log(f"wrote {args.out} ({meta['wall_s']:.0f}s wall, {meta['cpu_s']:.0f}s CPU)")


if __name__ == "__main__":
  sys.exit(main())
