"""One batch of edits with the records' defaults but a larger target-step cap (issue 24).

  python benchmarks/edit_target_steps.py --lm DIR [--steps 100] [--batch 100] --out RESULT.json

``--lm``: a facts LM folder (``hf/``, ``data/``). MEMIT and AlphaEdit at layer 0, everything
their records' defaults except ``target.v_num_grad_steps``; scored as
``benchmarks/edit_thresholds.py`` (whose ``run_model`` this drives). Writes only ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import edit_thresholds  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--lm", required=True)
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--batch", type=int, default=100)
  ap.add_argument("--out", required=True)
  a = ap.parse_args(argv)
  tgt = {"v_num_grad_steps": a.steps}
  edit_thresholds.SETTINGS = {"memit": [("relative", 0.03, tgt)],
                              "alphaedit": [("energy", 0.05, "relative", 0.1, tgt)]}
  out = edit_thresholds.run_model("lm", a.lm, a.batch)
  pathlib.Path(a.out).write_text(json.dumps(out, indent=1))
  for r in out["rows"]:
    print(f"{r['method']}: efficacy {r['efficacy']:.2f}, generalization "
          f"{r['generalization']:.2f}, locality {r['locality']:.2f} "
          f"({r['locality_argmax']:.2f}), {r['seconds']:.0f} s")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
