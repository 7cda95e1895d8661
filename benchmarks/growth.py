"""TokenFormer growth vs training the large model from scratch (CPU, small scale).

Reproduces, in trend, the TokenFormer paper's claim (Wang et al., ICLR 2025, §4.1): a model grown
from a trained smaller one by appending key/value parameter tokens reaches a given loss with far
fewer *new* tokens (and less total compute) than the same large model trained from scratch.

Three runs of `jaxparams.train.train` on the standard library's bytes, same data order, optimizer
and schedule:

* ``scratch``: the large TokenFormer (``3x`` the parameter tokens) for ``--steps`` steps.
* ``grown``: the small TokenFormer, grown by `jaxparams.scale.tokenformer.grow` to exactly the
  large shape at ``--grow-at``, then trained to ``--steps``.
* ``small``: the small TokenFormer without growth (reference: what growth adds).

For targets taken from the scratch run's eval-loss curve, the table gives the tokens each run
needs to first reach the target, the tokens the grown model needed *after* growth, and the
training compute (6 * params * tokens, summed over steps). Writes ``benchmarks/results/growth.md``
and ``growth.png``.

  python benchmarks/growth.py            # ~5-8 minutes on 2 shared CPU cores
  python benchmarks/growth.py --quick    # seconds, smoke test
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import shutil
import tempfile
import time

import jax
import ml_collections

from jaxparams.train import trainer

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def make_config(args, *, grow: bool, large: bool) -> ml_collections.ConfigDict:
  c = trainer.default_config()
  c.seed = 0
  c.num_steps = args.steps
  c.batch_size = args.batch
  c.seq_len = args.seq
  c.eval_batch_size = 64
  c.eval_every = args.eval_every
  c.log_every = args.eval_every
  c.checkpoint_every = args.steps
  c.keep_checkpoints = 1
  c.plot = False
  c.data.max_bytes = 2_000_000
  c.optim.lr = 3e-3
  c.optim.warmup_steps = max(args.steps // 20, 1)
  small = dict(qkv=args.tokens, out=args.tokens, ffn=4 * args.tokens)
  scale = args.factor if large else 1
  c.model = ml_collections.ConfigDict(dict(
      name="tokenformer", vocab_size=256, d_model=args.width, n_layers=2, n_heads=4,
      qkv_tokens=small["qkv"] * scale, out_tokens=small["out"] * scale,
      ffn_tokens=small["ffn"] * scale, max_len=args.seq))
  c.growth.hook = "tokenformer_grow"
  if grow:
    c.growth.steps = (args.grow_at,)
    c.growth.kwargs = ml_collections.ConfigDict(dict(n_new_tokens=ml_collections.ConfigDict(
        {k: v * (args.factor - 1) for k, v in small.items()})))
  return c


def curve(records):
  """[(step, tokens, eval_loss, cumulative training FLOPs)] from a run's records."""
  flops, out, tokens_at = 0.0, [], {}
  train = {r["step"]: r for r in records if r["event"] == "train"}
  steps = sorted(train)
  cum = {}
  prev_tokens = 0
  for s in steps:
    r = train[s]
    flops += 6.0 * r["n_params"] * (r["tokens"] - prev_tokens)
    prev_tokens = r["tokens"]
    cum[s] = flops
    tokens_at[s] = r["tokens"]
  for r in records:
    if r["event"] == "eval" and r["step"] in tokens_at:
      out.append((r["step"], tokens_at[r["step"]], r["eval_loss"], cum[r["step"]]))
  return out


def first_reach(cv, target, after_step=0):
  for step, tokens, loss, flops in cv:
    if step > after_step and loss <= target:
      return step, tokens, flops
  return None


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--grow-at", type=int, default=200)
  p.add_argument("--eval-every", type=int, default=20)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=64)
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--tokens", type=int, default=32, help="small model's qkv/out tokens (ffn 4x)")
  p.add_argument("--factor", type=int, default=3, help="large / small parameter tokens")
  p.add_argument("--no-small", action="store_true", help="skip the small-only reference run")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default=str(RESULTS / "growth.md"))
  args = p.parse_args()
  if args.quick:
    args.steps, args.grow_at, args.eval_every = 30, 10, 5

  work = pathlib.Path(tempfile.mkdtemp(prefix="growth_bench_"))
  runs, walls = {}, {}
  try:
    plan = [("scratch", False, True), ("grown", True, False)]
    if not args.no_small:
      plan.append(("small", False, False))
    for name, grow, large in plan:
      t0 = time.perf_counter()
      res = trainer.train(make_config(args, grow=grow, large=large), work / name)
      walls[name] = time.perf_counter() - t0
      runs[name] = res.records
      print(f"{name}: {walls[name]:.1f}s, final eval "
            f"{[r for r in res.records if r['event'] == 'eval'][-1]['eval_loss']:.4f}", flush=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)

  sc, gr = curve(runs["scratch"]), curve(runs["grown"])
  sm = curve(runs["small"]) if "small" in runs else None
  growth = [r for r in runs["grown"] if r["event"] == "growth"][0]
  n_small, n_large = growth["n_params_before"], growth["n_params_after"]
  tok_at_growth = growth["step"] * args.batch * args.seq
  # Targets: losses the scratch run reaches at 1/2, 2/3, 5/6 and all of its steps.
  targets = []
  for frac in (0.5, 2 / 3, 5 / 6, 1.0):
    k = max(0, min(len(sc) - 1, round(frac * len(sc)) - 1))
    targets.append(sc[k][2])
  rows = []
  for t in targets:
    s = first_reach(sc, t)
    g = first_reach(gr, t, after_step=growth["step"])
    fmt = lambda x: "not reached" if x is None else f"{x[1]:,}"
    small_col = "" if sm is None else f"{fmt(first_reach(sm, t))} | "
    rows.append(
        f"| {t:.4f} | {fmt(s)} | {fmt(g)} | {small_col}"
        + ("-" if g is None else f"{g[1] - tok_at_growth:,}") + " | "
        + ("-" if s is None else f"{s[2] / 1e12:.3f}") + " | "
        + ("-" if g is None else f"{g[2] / 1e12:.3f}") + " | "
        + ("-" if (s is None or g is None) else f"{(g[1] - tok_at_growth) / s[1]:.2f}") + " |")

  final_s, final_g = sc[-1][2], gr[-1][2]
  small_head = "" if sm is None else "tokens, small only | "
  small_final = "" if sm is None else f", small only {sm[-1][2]:.4f}"
  md = [
      "## TokenFormer growth vs. training from scratch (benchmarks/growth.py)",
      "",
      f"CPU ({platform.processor() or platform.machine()}, {jax.device_count()} device(s), "
      f"jax {jax.__version__}); byte-level LM on the Python standard library's source; "
      f"d_model={args.width}, 2 layers, seq {args.seq}, batch {args.batch}, AdamW lr 3e-3 "
      f"warmup+cosine over {args.steps} steps ({args.steps * args.batch * args.seq:,} tokens).",
      f"Small model: qkv/out/ffn tokens {args.tokens}/{args.tokens}/{4 * args.tokens} "
      f"({n_small:,} params); large: x{args.factor} tokens ({n_large:,} params). `grown` trains "
      f"the small model for {growth['step']} steps ({tok_at_growth:,} tokens), grows it with "
      f"`jaxparams.scale.tokenformer.grow` (zero keys, tau frozen) and continues; `scratch` "
      f"trains the large model from step 0. Eval loss on a fixed held-out batch every "
      f"{args.eval_every} steps.",
      "",
      f"Growth step: eval loss before {growth['loss_before']:.6f}, after "
      f"{growth['loss_after']:.6f} (|diff| {growth['abs_diff']:.1e}).",
      f"Final eval loss: scratch {final_s:.4f}, grown {final_g:.4f}{small_final}. Wall time: "
      + ", ".join(f"{k} {v:.0f}s" for k, v in walls.items()) + ".",
      "",
      "| target eval loss | tokens, scratch | tokens, grown (total) | " + small_head
      + "tokens, grown after growth | TFLOPs scratch | TFLOPs grown (total) | after-growth "
      "tokens / scratch tokens |",
      "|---|---|---|---|---|---|---|" + ("" if sm is None else "---|"),
      *rows,
      "",
      "Targets are the scratch run's eval loss at 1/2, 2/3, 5/6 and all of its steps. "
      "FLOPs = 6 x params x tokens summed over steps (embeddings included). One seed, one "
      "fixed eval batch (64 x seq bytes): differences of ~0.01 nats are within run-to-run noise;"
      " the trend (fewer large-model tokens and less compute after growth) is the claim.",
      "",
  ]
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text("\n".join(md))
  (out.with_suffix(".json")).write_text(json.dumps({"scratch": sc, "grown": gr, "small": sm,
                                                    "growth": growth, "args": vars(args)}))
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c[1] for c in sc], [c[2] for c in sc], label=f"large from scratch ({n_large:,} p)")
    ax.plot([c[1] for c in gr], [c[2] for c in gr], label=f"small ({n_small:,} p) -> grown")
    if sm is not None:
      ax.plot([c[1] for c in sm], [c[2] for c in sm], ls=":", label="small only")
    ax.axvline(tok_at_growth, color="k", ls="--", lw=0.8)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("eval loss (nats/byte)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=90)
  except ImportError:
    pass
  print("\n".join(md))


if __name__ == "__main__":
  main()
