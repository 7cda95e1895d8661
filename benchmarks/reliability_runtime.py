"""Issue 25, runtime categories at a larger seed/count than CI: tried / held / failed per category.

Runs ``tests/fuzz/runtime_runner.py`` (recipes, limits, tree API, concurrency, training
checkpoints, outputs, permissions, edit/calibration text) in one subprocess under a 3 GB address-space cap, then ``--signal-trials`` SIGINT
and as many SIGTERM trials against ``jaxparams merge`` (signal sent once the temporary folder
exists, after a random extra delay of 0-300 ms so it lands at different moments), and writes
the table as JSON to ``--out``.

  python benchmarks/reliability_runtime.py --seed 2025 --out /tmp/rel.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
CAP = 3 * 2**30


def _cap():
  resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


def _env():
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")


def categories(seed: int, counts: dict[str, int]) -> list[dict]:
  proc = subprocess.run([sys.executable, "-m", "tests.fuzz.runtime_runner", str(seed)]
                        + [f"{k}:{n}" for k, n in counts.items()], cwd=REPO, env=_env(),
                        preexec_fn=_cap, capture_output=True, text=True, check=False)
  out = [json.loads(ln[7:]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  if proc.returncode != 0 or "Traceback" in proc.stderr:
    out.append({"category": "runner", "tried": 1, "held": 0, "failed": 1,
                "failures": [proc.stderr[-1000:]]})
  return out


def signal_trials(seed: int, trials: int) -> dict:
  sys.path.insert(0, str(REPO))
  from tests.fuzz.test_fuzz_runtime import _models  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  tally = {"category": "signals", "tried": 0, "held": 0, "failed": 0, "failures": [],
           "finished_first": 0}
  for signum in [signal.SIGINT] * trials + [signal.SIGTERM] * trials:
    with tempfile.TemporaryDirectory() as d:
      d = pathlib.Path(d)
      paths = _models(d)
      proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "jaxparams.cli.main", "-q",
                               "merge", str(paths["recipe"]), str(d / "out"), "--compile-cache",
                               "none"], cwd=d, env=_env(), preexec_fn=_cap,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      while proc.poll() is None and not any(p.name.startswith(".out.tmp-") for p in d.iterdir()):
        time.sleep(0.005)
      time.sleep(float(rng.uniform(0, 0.3)))
      if proc.poll() is None:
        proc.send_signal(signum)
      _, err = proc.communicate()
      left = [p.name for p in d.iterdir() if p.name.startswith(".out")]
      lines = [ln for ln in err.splitlines() if ln.strip()]
      tally["tried"] += 1
      if proc.returncode == 0 and (d / "out").is_dir() and not left:
        tally["finished_first"] += 1  # the merge ended before the signal: a complete output
        tally["held"] += 1
      elif (proc.returncode == 128 + signum and len(lines) == 1 and not left
            and not (d / "out").exists()):
        tally["held"] += 1
      else:
        tally["failed"] += 1
        tally["failures"].append(f"{signal.Signals(signum).name}: rc {proc.returncode}, "
                                 f"left {left}, stderr {err[-300:]!r}")
  return tally


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--seed", type=int, default=2025)
  ap.add_argument("--recipes", type=int, default=200)
  ap.add_argument("--limits", type=int, default=60)
  ap.add_argument("--concurrency", type=int, default=8)
  ap.add_argument("--checkpoints", type=int, default=12)
  ap.add_argument("--outputs", type=int, default=16)
  ap.add_argument("--permissions", type=int, default=30)
  ap.add_argument("--edit-text", type=int, default=42)
  ap.add_argument("--signal-trials", type=int, default=10)
  ap.add_argument("--out", required=True)
  a = ap.parse_args()
  t0 = time.time()
  rows = categories(a.seed, {"recipes": a.recipes, "limits": a.limits, "tree_api": 0,
                             "concurrency": a.concurrency, "checkpoints": a.checkpoints,
                             "outputs": a.outputs, "permissions": a.permissions,
                             "edit_text": a.edit_text})
  rows.append(signal_trials(a.seed, a.signal_trials))
  result = {"seed": a.seed, "memory_cap_bytes": CAP, "rows": rows,
            "seconds": round(time.time() - t0, 1)}
  pathlib.Path(a.out).write_text(json.dumps(result, indent=1))
  for r in rows:
    print(f"{r['category']:22s} tried {r['tried']:4d} held {r['held']:4d} failed {r['failed']:3d}")


if __name__ == "__main__":
  main()
