"""Helpers shared by ``device_check.py`` and ``device_bench.py`` (issue 15's device script).

* :func:`import_jaxparams` -- imports ``jaxparams`` whether it is installed (``pip install -e .``)
  or not (a bare checkout on a machine without network: ``kernels/`` is mapped to
  ``jaxparams.kernels`` as ``pyproject.toml``'s ``package-dir`` does).
* :func:`device_line` -- the device and the jax version, for the report's header.
* :func:`gpu_ms` -- the median device time of a jitted call: CUPTI kernel time on a GPU (jax's
  Mosaic GPU profiler; the sum of the kernels of one call, gaps between them not counted), else
  the wall clock of ``reps`` asynchronously queued calls divided by ``reps``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_jaxparams():
  """``jaxparams`` from the environment, or from this checkout when it is not installed."""
  try:
    import jaxparams.kernels.dequant_matmul  # noqa: F401
  except ImportError:
    sys.path.insert(0, ROOT)
    import kernels as _kernels
    import jaxparams
    sys.modules["jaxparams.kernels"] = _kernels
    jaxparams.kernels = _kernels
  import jaxparams
  return jaxparams


def device_line() -> str:
  import jax
  import jaxlib
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", str(dev))
  return (f"{dev.platform}: {kind} x{jax.device_count()}, jax {jax.__version__}, "
          f"jaxlib {jaxlib.__version__}")


def rel_err(out, ref) -> float:
  import numpy as np
  out = np.asarray(out, np.float64)
  ref = np.asarray(ref, np.float64)
  if out.shape != ref.shape:
    return float("inf")
  scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
  return float(np.max(np.abs(out - ref))) / scale if ref.size else 0.0


def gpu_ms(fn, *args, iterations: int = 20, reps: int = 10) -> float:
  """Median milliseconds of one ``fn(*args)`` on the device (compiled and warmed up first)."""
  import jax
  jax.block_until_ready(fn(*args))
  if jax.default_backend() == "gpu":
    try:
      from jax.experimental.mosaic.gpu import profiler
      _, times = profiler.measure(fn, iterations=iterations)(*args)
      if times:
        return float(statistics.median(times))
    except Exception as e:  # noqa: BLE001 - CUPTI unavailable: wall clock below
      print(f"(CUPTI profiler unavailable: {type(e).__name__}: {str(e)[:200]}; wall clock)")
  samples = []
  for _ in range(max(1, iterations // reps) + 2):
    t = time.perf_counter()
    out = None
    for _ in range(reps):
      out = fn(*args)
    jax.block_until_ready(out)
    samples.append((time.perf_counter() - t) * 1e3 / reps)
  return float(statistics.median(samples))


class Report:
  """Markdown lines printed as they come and written to ``path`` at the end (and on errors)."""

  def __init__(self, path: str | None):
    self.path = path
    self.lines: list[str] = []

  def __call__(self, line: str = "") -> None:
    print(line, flush=True)
    self.lines.append(line)

  def write(self) -> None:
    if self.path:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      with open(self.path, "a", encoding="utf-8") as f:
        f.write("\n".join(self.lines) + "\n")
