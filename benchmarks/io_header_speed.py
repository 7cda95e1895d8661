"""Opening a 60 MB safetensors header (1,000,000 empty tensors): jaxparams vs the official reader,
and `jaxparams inspect` time to first row and to the end (issue 10, item 12).

Run: .venv/bin/python benchmarks/io_header_speed.py [n_tensors]
Writes benchmarks/results/io_header_speed.md.
"""

import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors import safe_open

import jaxparams as jp


def main(n: int = 1_000_000) -> None:
  d = Path(tempfile.mkdtemp())
  p = d / "many.safetensors"
  header = {f"layers.{i}.w":
            {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
  raw = json.dumps(header).encode()
  p.write_bytes(struct.pack("<Q", len(raw)) + raw)
  rows = []
  t = time.perf_counter()
  with safe_open(str(p), framework="numpy") as f:
    k_official = len(list(f.keys()))
  rows.append(("official `safe_open` + keys()", time.perf_counter() - t))
  t = time.perf_counter()
  with jp.io.open_checkpoint(p) as ck:
    k_ours = len(ck.names())
  rows.append(("jaxparams `open_checkpoint` + names()", time.perf_counter() - t))
  assert k_official == k_ours == n
  script = str(Path(sys.executable).parent / "jaxparams")
  t = time.perf_counter()
  proc = subprocess.Popen([script, "inspect", str(p)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL)
  first = None
  for i, _ in enumerate(proc.stdout):
    if i == 2 and first is None:
      first = time.perf_counter() - t
  proc.wait()
  rows.append(("`jaxparams inspect`: first row printed (process start included)", first))
  rows.append(("`jaxparams inspect`: whole table printed", time.perf_counter() - t))
  out = Path(__file__).parent / "results" / "io_header_speed.md"
  lines = [f"# Opening a {len(raw) / 1e6:.0f} MB header ({n:,} empty tensors)", "",
           f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs; "
           f"{time.strftime('%Y-%m-%d')}; safetensors {__import__('safetensors').__version__}.",
           "", "| step | seconds |", "|---|---|"]
  lines += [f"| {name} | {sec:.2f} |" for name, sec in rows]
  out.write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  p.unlink()


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
