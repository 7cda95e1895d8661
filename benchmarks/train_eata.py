"""EATA vs Tent vs the source model on digits under distribution shifts (one continual stream).

Writes ``benchmarks/results/train_eata.md``: accuracy on each shift (stream order), mean, and the
clean test accuracy of the adapted model afterwards (forgetting), plus the share of samples that
drove updates. ``python benchmarks/train_eata.py [--lr 0.1 0.3] [--rounds 2]``.
"""

import argparse
import datetime
import pathlib
import platform
import time

from jaxparams.train import digits


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--lr", type=float, nargs="+", default=[0.1, 0.3])
  ap.add_argument("--rounds", type=int, default=2)
  args = ap.parse_args()
  t0 = time.time()
  results = {lr: digits.compare_tta(lr=lr, rounds=args.rounds) for lr in args.lr}
  first = results[args.lr[0]]
  shifts = list(first["source"]["per_shift"])
  lines = [f"# EATA / Tent on digits shifts ({datetime.date.today()}, {platform.machine()} CPU, "
           f"shared with other jobs; {time.time() - t0:.0f}s)", "",
           f"DigitsCNN (batch-statistics norms), source-trained on clean digits (clean test "
           f"accuracy {first['clean_before']:.3f}). Test stream: the test split (360 images) "
           f"under each shift, {args.rounds} rounds, batches of 64, continual adaptation (no "
           f"reset). SGD momentum 0.9; EATA e_margin 0.4 ln 10, d_margin 0.4, fisher_alpha 2000 "
           f"(Fisher on the clean validation split). Columns: round:shift.", "",
           "| lr | method | " + " | ".join(shifts) + " | mean | clean after | samples used |",
           "|---" * (len(shifts) + 5) + "|"]
  for lr, res in results.items():
    for m in ("source", "tent", "eata"):
      r = res[m]
      lines.append(f"| {lr} | {m} | " + " | ".join(f"{r['per_shift'][s]:.3f}" for s in shifts)
                   + f" | {r['mean']:.3f} | {r['clean_after']:.3f} | "
                   + (f"{r['used']:.0%}" if "used" in r else "-") + " |")
  out = pathlib.Path(__file__).parent / "results" / "train_eata.md"
  out.write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
