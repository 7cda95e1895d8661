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
  python benchmarks/streamadapter.py --out benchmarks/results/streamadapter.json

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


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True, help="JSON file to write")
  ap.add_argument("--quick", action="store_true", help="tiny model, whole pipeline in minutes")
  ap.add_argument("--workdir", default="", help="where the trained models go (default: temp)")
  ap.add_argument("--config-arg", default="", help="extra config args, e.g. 'tasks=256'")
  args = ap.parse_args(argv)
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
  return 0


if __name__ == "__main__":
  sys.exit(main())
