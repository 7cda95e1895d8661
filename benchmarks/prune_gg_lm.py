"""GG initialisation on the small LM (configs/prune_lm.py:dense) and the GG shapes of the trained Llama.

Trains (or reuses finished runs in ``--workroot``) the dense Llama of ``configs/prune_lm.py`` through
the trainer (``python -m jaxparams.train``) with the model's own init (``gg_nu=0``) and with GG
initialisation of every matrix (``gg_nu`` = 2, 1, 0.5: ``jaxparams.prune.gg_reinit``, the same
variance as the own init), same seeds and data order; then restores the final parameters and
reports ``jp.tree.summary``'s GG shape column for the trained models.

Run:  python benchmarks/prune_gg_lm.py [--workroot /tmp/prune_gg_lm] [--steps 300]
Writes benchmarks/results/prune_gg_lm.md (and .json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NUS = ("0.0", "2.0", "1.0", "0.5")


def _run(workdir: Path, nu: str, seed: int, steps: int) -> list[tuple[int, float]]:
  metrics = workdir / "metrics.jsonl"
  done = workdir / "checkpoints" / str(steps)
  if not done.exists():
    cmd = [sys.executable, "-m", "jaxparams.train", f"--config=configs/prune_lm.py:dense,gg_nu={nu}",
           f"--workdir={workdir}", f"--config.num_steps={steps}", "--config.batch_size=8",
           "--config.seq_len=64", "--config.eval_every=25", "--config.log_every=25",
           f"--config.seed={seed}", "--config.plot=False"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
  rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
  return [(r["step"], r["eval_loss"]) for r in rows if r.get("event") == "eval"]


def _params(workdir: Path, steps: int):
  import orbax.checkpoint as ocp
  m = ocp.CheckpointManager(workdir.absolute() / "checkpoints")
  return m.restore(steps, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"][
      "params"]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workroot", default="/tmp/prune_gg_lm")
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--seeds", type=int, default=2)
  args = ap.parse_args(argv)
  import jax

  import jaxparams as jp
  root = Path(args.workroot)
  curves: dict[str, list] = {}
  for nu in NUS:
    per_seed = [_run(root / f"lm_nu{nu}_s{s}", nu, s, args.steps) for s in range(args.seeds)]
    steps = [st for st, _ in per_seed[0]]
    curves[nu] = {"steps": steps, "per_seed": [[v for _, v in c] for c in per_seed],
                  "mean": np.mean([[v for _, v in c] for c in per_seed], axis=0).tolist()}
  shapes = {}
  for nu in ("0.0", "1.0"):
    s = jp.tree.summary(_params(root / f"lm_nu{nu}_s0", args.steps))
    shapes[f"{nu}/trained"] = {r.path: r.gg_shape for r in s.rows}
  out = {"machine": f"{platform.machine()}, {jax.device_count()} CPU device(s)",
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "jax": jax.__version__, "steps": args.steps, "seeds": args.seeds, "curves": curves,
         "gg_shapes": shapes}
  res = ROOT / "benchmarks" / "results"
  res.mkdir(parents=True, exist_ok=True)
  (res / "prune_gg_lm.json").write_text(json.dumps(out, indent=1))
  label = {"0.0": "own init (normal, std 0.02, every matrix)",
           "2.0": "GG nu=2 (a fresh Gaussian draw, same variance)", "1.0": "GG nu=1 (Laplace)",
           "0.5": "GG nu=0.5"}
  st = curves["0.0"]["steps"]
  show = [i for i, s in enumerate(st) if s % 50 == 0]
  md = ["| init (mean of seeds) | " + " | ".join(f"step {st[i]}" for i in show) + " |",
        "|---|" + "---:|" * len(show)]
  for nu, c in curves.items():
    md.append(f"| {label[nu]} | " + " | ".join(f"{c['mean'][i]:.3f}" for i in show) + " |")
  md += ["", "Final eval loss per seed: " + "; ".join(
      f"{label[nu].split(' (')[0]}: " + ", ".join(f"{c[-1]:.3f}" for c in curves[nu]["per_seed"])
      for nu in curves) + ".", ""]
  paths = [p for p in shapes["0.0/trained"] if not p.endswith("scale")]
  md += ["GG shape (`jp.tree.summary`'s column, moment matching) of the trained models "
         f"(seed 0, {args.steps} steps):", "",
         "| leaf | own init, trained | GG nu=1 init, trained |", "|---|---:|---:|"]
  md += [f"| {p} | {shapes['0.0/trained'][p]:.2f} | {shapes['1.0/trained'][p]:.2f} |"
         for p in paths]
  (res / "prune_gg_lm.md").write_text("\n".join(md) + "\n")
  print("\n".join(md))
  return 0


if __name__ == "__main__":
  sys.exit(main())
