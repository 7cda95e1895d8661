"""Crash injection (issue 10, items 2 and 4): SIGINT or SIGKILL a `jaxparams convert` subprocess
at random moments. After each kill the output is absent or complete (equal to the source);
Ctrl-C prints at most one line and no traceback; the next run removes what the killed run
left, so after the last run no temporary folder remains. Set ``JAXPARAMS_CRASH_REPORT`` to a
path to write the counts."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jaxparams as jp

JAXPARAMS = str(Path(sys.executable).parent / "jaxparams")


def _complete(out: Path, source: dict) -> bool:
  flat, _ = jp.io.load_any(out)
  return flat.keys() == source.keys() and all(np.array_equal(flat[k], v) for k, v in source.items())


@pytest.mark.slow
@pytest.mark.parametrize("target", ["orbax", "safetensors"])
def test_kill_at_random_moments_loses_nothing_and_leaves_no_temp(tmp_path, target):
  rng = random.Random(1234 + len(target))
  src = tmp_path / "src"
  source = {f"layers.{i}.w": np.random.default_rng(i).normal(size=(256, 256)).astype(np.float32)
            for i in range(32)}
  jp.io.save_safetensors(source, src, config={"model_type": "x"})
  out = tmp_path / "out"
  argv = [JAXPARAMS, "convert", str(src), str(out), "--to", target, "--overwrite",
          "--max-shard-size", "1MB"]
  counts = {"injections": 0, "sigint": 0, "sigkill": 0, "finished_first": 0, "outputs_lost": 0,
            "incomplete_outputs": 0, "tracebacks": 0, "left_after_sigint": 0}
  t0 = time.monotonic()
  subprocess.run(argv, check=True, capture_output=True, timeout=300)
  full = time.monotonic() - t0
  killed: list[int] = []
  for trial in range(6):
    had_output = out.exists()
    sig = signal.SIGINT if trial % 2 == 0 else signal.SIGKILL
    started = time.time()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    delay = rng.uniform(0.2, full * 1.1)
    time.sleep(delay)
    p.send_signal(sig)
    if sig == signal.SIGKILL:
      killed.append(p.pid)
    _, err = p.communicate(timeout=300)
    counts["injections"] += 1
    counts["sigint" if sig == signal.SIGINT else "sigkill"] += 1
    counts["finished_first"] += p.returncode == 0
    counts["tracebacks"] += "Traceback" in err
    if sig == signal.SIGINT:
      # -SIGINT: the signal came before the interpreter installed its handler (start-up of a
      # loaded machine); nothing can have been written then.
      early = p.returncode == -signal.SIGINT and delay < 2.0 and not err
      # -SIGINT after its output is in place: the run had finished and the interpreter was
      # shutting down (Python gives SIGINT back to the default action while it finalizes).
      late = (p.returncode == -signal.SIGINT and not err and out.exists()
              and out.stat().st_mtime >= started)
      assert p.returncode in (0, 130) or early or late, (p.returncode, delay, err)
      assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
      time.sleep(1.0)  # a background writer still running would write here
      left = [q.name for q in tmp_path.iterdir() if q.name.startswith(".out.")]
      # A SIGKILLed run's folder stays until a later run sweeps it (checked after the loop); a
      # run interrupted before it got that far leaves it there. Its own folder it must remove.
      own = [n for n in left if f"-{p.pid}-" in n]
      counts["left_after_sigint"] += len(own)
      assert own == [], f"Ctrl-C left {own} (pid {p.pid}, exit {p.returncode}, {delay:.2f} s)"
      unknown = [n for n in left if not any(f"-{k}-" in n for k in killed)]
      assert unknown == [], f"{unknown}: not a SIGKILLed run's ({killed})"
    if out.exists():
      counts["incomplete_outputs"] += not _complete(out, source)
    elif had_output:
      counts["outputs_lost"] += 1  # an --overwrite run killed must leave the old or the new one
  r = subprocess.run(argv, capture_output=True, text=True, timeout=300)  # the next run
  assert r.returncode == 0, r.stderr
  assert _complete(out, source)
  leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("src", "out"))
  report = os.environ.get("JAXPARAMS_CRASH_REPORT")
  if report:
    Path(f"{report}.{target}.json").write_text(json.dumps(counts | {"leftovers": leftovers}))
  assert leftovers == [] and counts["outputs_lost"] == 0 and counts["incomplete_outputs"] == 0
  assert counts["tracebacks"] == 0


@pytest.mark.slow
def test_two_identical_concurrent_runs_never_both_replace(tmp_path):
  src = tmp_path / "src"
  jp.io.save_safetensors({f"w{i}": np.full((256, 256), i, np.float32) for i in range(16)}, src)
  argv = [JAXPARAMS, "convert", str(src), str(tmp_path / "out"), "--to", "safetensors"]
  procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
  codes = sorted(code for code, _ in results)
  assert codes == [0, 2], results
  err = next(e for code, e in results if code == 2)
  assert "appeared while this run was writing" in err or "already exists" in err, err
  kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.new-")]
  assert len(kept) == ("appeared while" in err)  # the second result is kept and named
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
