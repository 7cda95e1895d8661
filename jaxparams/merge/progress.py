"""The streaming merge's progress bar (tensors/s, GB/s), as a driver callback.

Example:
  >>> with progress_bar(None, False, 'linear', 3) as update:
  ...   update(1, 3, 1000)
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(console: Any, enabled: bool, method: str, total: int
                 ) -> Iterator[Callable[[int, int, int], None]]:
  """Yields ``update(done, total, bytes_read)`` drawing a rich progress bar."""
  from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                             TimeElapsedColumn, TimeRemainingColumn)
  if console is None and enabled:
    from rich.console import Console
    console = Console(stderr=True)
  bar = Progress(
      TextColumn(f"[bold]merge[/] {method}"), BarColumn(), MofNCompleteColumn(),
      TextColumn("{task.fields[tps]:.1f} tensors/s"), TextColumn("{task.fields[gbps]:.2f} GB/s"),
      TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled,
      transient=False)
  with bar:
    task = bar.add_task("merge", total=total, tps=0.0, gbps=0.0)
    t0 = time.perf_counter()

    def update(done: int, _total: int, nbytes: int) -> None:
      dt = max(time.perf_counter() - t0, 1e-9)
      bar.update(task, completed=done, tps=done / dt, gbps=nbytes / dt / 1e9)

    yield update
