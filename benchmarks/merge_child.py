"""One timed ``jaxparams merge`` (or other sub-command) in a fresh process: start-up,
compile and run seconds.

Run by ``merge_vs_mergekit.py`` under ``/usr/bin/time -v`` (so peak RSS is the
whole process's). Prints one JSON line on stdout:

* ``startup_s``: ``import jax`` + ``jaxparams.cli`` + the merge modules (before any tensor);
* ``merge_s``: ``jaxparams merge ...`` (``jaxparams.cli.main.main``) after start-up;
* ``compile_s``: jax tracing + lowering + XLA compilation (or persistent-cache loading)
  inside the merge, from ``jax.monitoring`` duration events;
* ``events``: those events' totals.

Usage: ``python benchmarks/merge_child.py RECIPE OUT_DIR [jaxparams merge flags...]``
or ``python benchmarks/merge_child.py --sub quantize SRC OUT [flags...]``.
"""

import json
import sys
import time

T0 = time.perf_counter()
import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.monitoring  # noqa: E402  pylint: disable=wrong-import-position

from jaxparams.cli.main import main  # noqa: E402  pylint: disable=wrong-import-position
import jaxparams.merge.stream  # noqa: E402,F401  pylint: disable=wrong-import-position

SUB = "merge"
if len(sys.argv) > 2 and sys.argv[1] == "--sub":
  SUB = sys.argv[2]
  del sys.argv[1:3]
  import jaxparams.quant.stream  # noqa: E402,F401  pylint: disable=wrong-import-position

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration",
                  "/jax/compilation_cache/cache_retrieval_time_sec")


def run() -> None:
  startup = time.perf_counter() - T0
  events: dict[str, float] = {}

  def listen(event: str, duration: float, **_) -> None:
    events[event] = events.get(event, 0.0) + duration

  jax.monitoring.register_event_duration_secs_listener(listen)
  t1 = time.perf_counter()
  rc = main([SUB] + sys.argv[1:])
  merge = time.perf_counter() - t1
  print(json.dumps({"rc": rc, "startup_s": startup, "merge_s": merge,
                    "compile_s": sum(events.get(e, 0.0) for e in COMPILE_EVENTS),
                    "events": events}), flush=True)
  sys.exit(rc)


if __name__ == "__main__":
  run()
