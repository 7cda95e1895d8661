"""SIGINT during a streaming merge: clean exit (no segfault), nothing left behind.

Issue 10 item 4: the prefetch thread must be stopped and joined before the output's
temporary folder is removed. Slow (starts several interpreters).
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxparams.io import save_safetensors


@pytest.mark.slow
def test_sigint_mid_merge_exits_cleanly(tmp_path):
  rng = np.random.default_rng(0)
  for m in ("a", "b"):
    save_safetensors({f"layers.{i}.w": rng.standard_normal((256, 256)).astype(np.float32)
                      for i in range(400)}, tmp_path / m)
  (tmp_path / "r.yml").write_text(
      "merge_method: ties\nbase_model: a\nmodels:\n  - model: b\n"
      "    parameters: {weight: 1.0, density: 0.5}\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  results = []
  for delay in (0.5, 1.5, 3.0):
    out = tmp_path / f"out{delay}"
    p = subprocess.Popen([sys.executable, "-m", "jaxparams.cli.merge", "r.yml", str(out),
                          "--quiet", "--max-shard-size", "1M", "--compile-cache", "none"],
                         cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    # wait until the merge is writing (its temporary folder exists), then interrupt
    t0 = time.time()
    while time.time() - t0 < 120 and p.poll() is None and not [
        x for x in os.listdir(tmp_path) if x.startswith(f".out{delay}.tmp-")]:
      time.sleep(0.05)
    time.sleep(delay / 10)
    if p.poll() is None:
      p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    results.append(p.returncode)
    assert p.returncode in (0, 130), (p.returncode, err[-2000:])  # never -11 (SIGSEGV)
    if p.returncode == 130:
      assert "interrupted" in err and not out.exists()
    assert not [x for x in os.listdir(tmp_path) if ".tmp-" in x]
  assert 130 in results
