"""Is the page-cache drop after every token a fair way to hold the flash budget? Direct I/O against it.

The flash benchmark keeps the model's pages out of memory by dropping them from the page
cache (``POSIX_FADV_DONTNEED``) after every token; naive loading pays for ~2 GB of pages
each time, the sparse settings for ~80 MB. A reader that never fills the page cache
(``O_DIRECT``) is the alternative. This script times, on a file of the flash model's FFN
size, the read pattern of each: naive (4 MiB reads over the whole file) and bundled (5,370
reads of 12 KiB at random neuron offsets, the full run's count per token), from 8 threads,
buffered then dropped, and direct.

Usage: ``python benchmarks/flash_direct_io.py --out OUT.json [--workdir DIR] [--repeats 3]``.
The scratch file goes to ``--workdir`` (default: the system temporary folder) and is removed.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SIZE = 2_013_265_920        # the full run's FFN bytes (4 layers x 40,960 neurons x 12 KiB)
ROW = 12_288                 # one bundled neuron: 3 x 1024 x fp32
CALLS = 5_370                # bundled reads per token in the full run
CHUNK = 4 << 20              # naive: the runtime's max_chunk_bytes


def _read(pool, fd: int, reqs: list[tuple[int, int]], bufs: list[mmap.mmap]) -> float:
  def part(i):
    mv = memoryview(bufs[i])
    for off, n in reqs[i::len(bufs)]:
      os.preadv(fd, [mv[:n]], off)
  t = time.perf_counter()
  list(pool.map(part, range(len(bufs))))
  return time.perf_counter() - t


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--workdir", default=None)
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  patterns = {
      "naive": [(o, CHUNK) for o in range(0, SIZE - CHUNK + 1, CHUNK)],
      "bundled": [(int(o) * ROW, ROW) for o in
                  np.sort(rng.choice(SIZE // ROW, CALLS, replace=False))]}
  result = {"file_bytes": SIZE, "threads": 8, "machine": f"{platform.node()} "
            f"{platform.machine()} {os.cpu_count()} CPUs", "runs": {}}
  with tempfile.TemporaryDirectory(dir=args.workdir) as d:
    path = Path(d) / "ffn.bin"
    with open(path, "wb") as f:
      for _ in range(SIZE // CHUNK):
        f.write(rng.bytes(CHUNK))
      f.write(rng.bytes(SIZE % CHUNK))
    os.sync()
    buffered = os.open(path, os.O_RDONLY)
    os.posix_fadvise(buffered, 0, 0, os.POSIX_FADV_RANDOM)
    direct = os.open(path, os.O_RDONLY | os.O_DIRECT)
    with ThreadPoolExecutor(8) as pool:
      for name, reqs in patterns.items():
        bufs = [mmap.mmap(-1, max(n for _, n in reqs)) for _ in range(8)]  # page-aligned
        rows = []
        for _ in range(args.repeats):
          os.posix_fadvise(buffered, 0, 0, os.POSIX_FADV_DONTNEED)
          t_buf = _read(pool, buffered, reqs, bufs)
          t0 = time.perf_counter()
          os.posix_fadvise(buffered, 0, 0, os.POSIX_FADV_DONTNEED)
          t_drop = time.perf_counter() - t0
          t_dir = _read(pool, direct, reqs, bufs)
          rows.append({"buffered_s": t_buf, "drop_s": t_drop, "direct_s": t_dir})
          print(f"{name:8s} buffered {t_buf:.3f} s + drop {t_drop:.3f} s = "
                f"{t_buf + t_drop:.3f} s | direct {t_dir:.3f} s", flush=True)
        result["runs"][name] = {"bytes": sum(n for _, n in reqs), "calls": len(reqs),
                                "repeats": rows}
    os.close(buffered)
    os.close(direct)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(result, indent=1))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
