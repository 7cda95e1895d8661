"""Start-up and per-tensor overhead of the ``jaxparams`` command (issue 26 item 4).

Runs each command ``--repeats`` times in a fresh interpreter and reports the median wall time
and the median CPU seconds (user + sys of the child). The merge rows stream a ties recipe over a
tiny Llama (21 tensors, 107k parameters), once without the compilation cache (every shape
compiled) and once with a warm cache (what a second run costs).

Usage::

  python benchmarks/cli_startup.py --out /tmp/startup.json   # this checkout
  PYTHONPATH=/path/to/other/checkout python benchmarks/cli_startup.py --out /tmp/before.json

Writes only ``--out`` (JSON) and temporary folders.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIX = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "llama_tiny"


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  # cwd outside any checkout: `python -c` puts the working directory first on sys.path.
  rc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      cwd=tempfile.gettempdir(), check=False).returncode
  wall = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return wall, cpu, rc


def _recipe(tmp: Path) -> Path:
  sys.path.insert(0, str(FIX.parent))
  import numpy as np  # pylint: disable=import-outside-toplevel
  from peft_finetuned import finetuned  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  ft = tmp / "ft"
  ft.mkdir()
  save_file({k: np.ascontiguousarray(v) for k, v in
             finetuned(load_file(str(FIX / "model.safetensors"))).items()},
            str(ft / "model.safetensors"))
  shutil.copy(FIX / "config.json", ft / "config.json")
  recipe = tmp / "r.yml"
  recipe.write_text(f"merge_method: ties\nbase_model: {FIX}\nmodels:\n"
                    f"  - model: {FIX}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
                    f"  - model: {ft}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
                    "dtype: float32\n")
  return recipe


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", required=True, help="JSON file to write")
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  exe = [sys.executable, "-W", "ignore", "-c",
         "import sys; from jaxparams.cli.main import main; sys.exit(main())"]
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    env = dict(os.environ, JAXPARAMS_COMPILE_CACHE="none")
    recipe = _recipe(tmp)
    cases = {
        "jaxparams --help": ["--help"],
        "jaxparams mrege (typo)": ["mrege"],
        "jaxparams merge --help": ["merge", "--help"],
        "jaxparams quantize --help": ["quantize", "--help"],
        "jaxparams inspect llama_tiny": ["inspect", str(FIX)],
    }
    for name, words in cases.items():
      runs = [_run(exe + words, env) for _ in range(args.repeats)]
      rows[name] = {"wall_s": statistics.median(r[0] for r in runs),
                    "cpu_s": statistics.median(r[1] for r in runs), "rc": runs[0][2]}
    merge = exe + ["merge", str(recipe), str(tmp / "out"), "--overwrite", "--quiet"]
    runs = [_run(merge, env) for _ in range(args.repeats)]
    rows["merge 21 tensors, no compile cache"] = {
        "wall_s": statistics.median(r[0] for r in runs),
        "cpu_s": statistics.median(r[1] for r in runs), "rc": runs[0][2]}
    cached = dict(os.environ, JAXPARAMS_COMPILE_CACHE=str(tmp / "cache"))
    _run(merge, cached)  # fills the cache
    runs = [_run(merge, cached) for _ in range(args.repeats)]
    rows["merge 21 tensors, warm compile cache"] = {
        "wall_s": statistics.median(r[0] for r in runs),
        "cpu_s": statistics.median(r[1] for r in runs), "rc": runs[0][2]}
  Path(args.out).write_text(json.dumps(rows, indent=1))
  for name, r in rows.items():
    print(f"{name:40s} wall {r['wall_s']:6.2f} s  cpu {r['cpu_s']:6.2f} s  rc {r['rc']}")


if __name__ == "__main__":
  main()
