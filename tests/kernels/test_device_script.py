"""``benchmarks/device_run.sh --dry-run``: issue 15's device script runs end to end on CPU.

The dry run is the same code as the device run (kernel checks against the references, the three
benchmarks, the markdown report) on tiny sizes with the TPU kernels interpreted, so the script
cannot rot between the sessions that have a GPU.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "device_run.sh"


def _run(*args, env=None, timeout=900):
  return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_device_run_dry_run_writes_every_section(tmp_path, test_compile_cache_env):
  report = tmp_path / "device.md"
  env = {**os.environ, "PYTHON": sys.executable, "DEVICE_REPORT": str(report),
         **test_compile_cache_env}  # its processes are never killed: they may share the cache
  env.pop("OUT", None)
  r = _run("--dry-run", env=env)
  assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
  text = report.read_text()
  for part in ("## Device run", "- device: cpu", "### Kernels vs references on the device (dry run)",
               "| dequant_matmul w4 g128 bfloat16 M=3 K=384 N=96 |", "| sparsify_merge ties",
               "0 check(s) failed.", "#### W4A16 dequant-matmul", "#### Fused TIES / DARE merge",
               "Copy (`x * s`", "#### Merge of a generated Llama-shaped set",
               "| task_arithmetic | default |", "0 benchmark row(s) or part(s) failed.",
               "exit status 0."):
    assert part in text, part
  assert "FAIL" not in text and "error" not in text


def test_device_run_rejects_unknown_arguments():
  r = _run("--fast", timeout=60)
  assert r.returncode == 2 and "valid: --dry-run" in r.stderr
