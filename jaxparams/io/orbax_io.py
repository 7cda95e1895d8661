"""Orbax save/restore of parameter trees (sharded arrays included)."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np

from jaxparams.io.atomic import check_output_dir
from jaxparams.io.interrupt import finish_before_interrupt

__all__ = ["save_orbax", "restore_orbax", "quiet_orbax_errors"]


@contextlib.contextmanager
def quiet_orbax_errors() -> Iterator[None]:
  """Keeps a failed orbax read or write to the one exception it raises.

  When a write fails (a full disk) or a read does (a damaged checkpoint), orbax's threads also
  log the error with its traceback (``ERROR:absl: ... raised an exception``), its asyncio
  callbacks report ``RuntimeError: Event loop is closed`` as unraisable exceptions, and the
  failed tensorstore tasks, once garbage-collected, log ``Task exception was never retrieved``
  through asyncio: 240 lines of stderr for one full disk. Inside this block all three are
  dropped (the block collects garbage before it ends, so the failed tasks are reported while
  it is still in force); the exception itself still reaches the caller, which reports it in
  one line.

  Example:
    >>> with quiet_orbax_errors():
    ...   pass
  """
  previous = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and "Event loop is closed" in str(unraisable.exc_value)):
      previous(unraisable)

  def drop_thread_errors(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR

  def drop_unretrieved(record: logging.LogRecord) -> bool:
    return "exception was never retrieved" not in str(record.msg).split("\n", 1)[0]

  absl, aio = logging.getLogger("absl"), logging.getLogger("asyncio")
  sys.unraisablehook = hook
  absl.addFilter(drop_thread_errors)
  aio.addFilter(drop_unretrieved)
  try:
    yield
  finally:
    gc.collect()
    aio.removeFilter(drop_unretrieved)
    absl.removeFilter(drop_thread_errors)
    sys.unraisablehook = previous


def save_orbax(tree: Any, path: str | Path, *, overwrite: bool = False) -> None:
  """Saves a pytree of arrays with orbax (a folder; atomic via orbax's own rename).

  Sharded ``jax.Array`` leaves are written shard by shard by each host. Ctrl-C
  is deferred until orbax's background writer has finished, so a caller
  cleaning up on ``KeyboardInterrupt`` never races it.

  Example:
    >>> import tempfile, os, jax.numpy as jnp
    >>> p = os.path.join(tempfile.mkdtemp(), 'ck')
    >>> save_orbax({'w': jnp.ones(2)}, p)
    >>> restore_orbax(p)['w'].tolist()
    [1.0, 1.0]
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = check_output_dir(path, overwrite).absolute()
  tree = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else np.asarray(x), tree)
  with (quiet_orbax_errors(), finish_before_interrupt("the orbax write"),
        ocp.StandardCheckpointer() as ckptr):
    ckptr.save(path, tree, force=overwrite)
    ckptr.wait_until_finished()


def restore_orbax(path: str | Path, like: Any | None = None) -> Any:
  """Restores a pytree saved by :func:`save_orbax`.

  Args:
    path: the checkpoint folder.
    like: optional abstract or concrete tree (``jax.ShapeDtypeStruct`` leaves
      with ``sharding`` restore straight into those shardings).

  Raises:
    FileNotFoundError: if ``path`` does not exist.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such orbax checkpoint.")
  with ocp.StandardCheckpointer() as ckptr:
    if like is None:
      return ckptr.restore(path)
    abstract = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=getattr(x, "sharding", None)), like)
    return ckptr.restore(path, abstract)
