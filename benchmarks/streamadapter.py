"""StreamAdapter vs ICL vs LoRA test-time training on held-out in-context tasks (issue 28).

Runs ``configs/streamadapter.py`` end to end (:func:`jaxparams.adapt.streamadapter.pipeline.run`):
a small Llama learns random token mappings in context; its ICL accuracy against the number of
demonstrations is measured before any adapter exists; then only the StreamAdapter modules train
(base frozen) and, on held-out tasks, for k = 1, 2, 4, 8, 16, 32 demonstrations, we measure the
accuracy of zero-shot, ICL (k demonstrations in the prompt), StreamAdapter (the same k
demonstrations absorbed into a rank-M update, the query run alone) and a LoRA fine-tuned on the k
demonstrations (fixed number of Adam steps), plus the per-query FLOPs (XLA cost analysis) and wall
time of ICL and StreamAdapter.

  python benchmarks/streamadapter.py --out /tmp/sa.json --quick
  python benchmarks/streamadapter.py --out benchmarks/results/streamadapter_full.json \
      --plot benchmarks/results/streamadapter.png

The trained base model and adapter stay in ``--workdir`` (default: a fresh temp folder outside the
repository); a rerun with the same ``--workdir`` reuses them. Only ``--out`` is written otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import resource
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(quick: bool, arg: str):
  spec = importlib.util.spec_from_file_location("sa_config", ROOT / "configs" / "streamadapter.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  args = ",".join(a for a in (("quick" if quick else ""), arg) if a)
  return mod.get_config(args or None)


def plot(res: dict, png: str) -> None:
  """Accuracy and per-query FLOPs against k (the RESULTS figure)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ks = res["k"]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
  a1.plot(ks, res["ideal_icl"], "k:", label="Bayes-optimal learner")
  a1.plot(ks, res["icl"], "o-", label="ICL (demonstrations in the prompt)")
  a1.plot(ks, res["streamadapter"], "s-", label="StreamAdapter (query alone)")
  a1.plot(ks, res["lora_ttt"], "^-", label="LoRA test-time training")
  a1.axhline(res["zero_shot"], color="gray", lw=1, label="zero-shot")
  a1.set_xscale("log", base=2); a1.set_xlabel("demonstrations k")
  a1.set_ylabel("held-out accuracy"); a1.legend(fontsize=7)
  a2.plot(ks, [f / 1e3 for f in res["icl_flops_per_query"]], "o-", label="ICL")
  a2.plot(ks, [f / 1e3 for f in res["streamadapter_flops_per_query"]], "s-",
          label="StreamAdapter")
  a2.plot(ks, [f / 1e3 for f in res["absorb_flops_per_context"]], "x--",
          label="absorb (once per context)")
  a2.set_xscale("log", base=2); a2.set_yscale("log"); a2.set_xlabel("demonstrations k")
  a2.set_ylabel("kFLOPs per query (XLA cost analysis)"); a2.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(png, dpi=110)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True, help="JSON file to write")
  ap.add_argument("--quick", action="store_true", help="tiny model, whole pipeline in minutes")
  ap.add_argument("--workdir", default="", help="where the trained models go (default: temp)")
  ap.add_argument("--config-arg", default="", help="extra config args, e.g. 'tasks=256'")
  ap.add_argument("--plot", default="", help="also draw accuracy and FLOPs against k (PNG)")
  ap.add_argument("--replot", action="store_true",
                  help="run nothing: draw --plot from the existing --out JSON")
  args = ap.parse_args(argv)
  if args.replot:
    if not args.plot:
      ap.error("--replot needs --plot PNG")
    plot(json.loads(pathlib.Path(args.out).read_text()), args.plot)
    return 0
  from jaxparams.adapt.streamadapter import pipeline  # pylint: disable=g-import-not-at-top
  config = _config(args.quick, args.config_arg)
  workdir = args.workdir or tempfile.mkdtemp(prefix="jaxparams_streamadapter_")
  t0, c0 = time.time(), time.process_time()
  progress = lambda r: print(json.dumps(r), flush=True, file=sys.stderr)
  res = pipeline.run(config, workdir, progress=progress)
  base_icl = json.loads((pathlib.Path(workdir) / "base_icl.json").read_text())
  out = {k: res[k] for k in ("k", "zero_shot", "icl", "streamadapter", "lora_ttt",
                             "icl_ms_per_query", "streamadapter_ms_per_query")}
  out.update({k: v for k, v in res.items() if k not in out})
  out["base_icl_before_adapter"] = base_icl
  ru = resource.getrusage(resource.RUSAGE_SELF)
  out["meta"] = {
      "quick": args.quick, "config_arg": args.config_arg, "workdir": workdir,
      "wall_s": round(time.time() - t0, 1), "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
      "process_cpu_s": round(time.process_time() - c0, 1),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
      "config": config.to_dict(),
  }
  pathlib.Path(args.out).write_text(json.dumps(out, indent=1, default=str))
  print(json.dumps({k: out[k] for k in ("k", "zero_shot", "icl", "streamadapter", "lora_ttt")}))
  if args.plot:
    plot(out, args.plot)
  return 0


if __name__ == "__main__":
  sys.exit(main())
