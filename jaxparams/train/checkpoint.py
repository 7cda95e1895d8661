"""Orbax checkpoints of the full training state, with a config fingerprint.

A checkpoint at step ``s`` (``workdir/checkpoints/s``) holds two items:

* ``state`` (orbax ``StandardSave``): ``params``, ``opt_state`` and the base PRNG key ``rng``.
* ``meta`` (JSON): ``step`` (which is also the data-iterator position: batches are a pure
  function of ``(seed, step)``), the model config as it is *now* (after any growth, so the restore
  target has the grown shapes), the config fingerprint and the full config for error messages.

Resuming from a checkpoint written by a different config raises ``ValueError`` listing the fields
that differ. Fields that only control the run, not the trajectory (:data:`RUN_CONTROL_FIELDS`),
are left out of the fingerprint.

Example:
  >>> import ml_collections
  >>> c = ml_collections.ConfigDict({'seed': 0, 'log_every': 1})
  >>> d = ml_collections.ConfigDict({'seed': 0, 'log_every': 5})
  >>> fingerprint(c) == fingerprint(d)
  True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxparams.io.orbax_io import quiet_orbax_errors

__all__ = ["RUN_CONTROL_FIELDS", "fingerprint", "config_fields", "open_manager", "save",
           "restore_meta", "restore_state", "check_fingerprint", "restore_newest_intact",
           "CheckpointRefused"]

_log = logging.getLogger(__name__)

RUN_CONTROL_FIELDS = ("log_every", "checkpoint_every", "keep_checkpoints", "stop_at_step", "plot",
                      "snapshot")


def config_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Flat ``{'a.b.c': value}`` view of a config without the run-control fields (JSON-safe)."""
  flat: dict[str, Any] = {}

  def walk(node: Any, prefix: str) -> None:
    if isinstance(node, dict):
      for k in sorted(node):
        walk(node[k], f"{prefix}.{k}" if prefix else k)
    else:
      flat[prefix] = json.loads(json.dumps(node, default=str))

  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  walk({k: v for k, v in d.items() if k not in RUN_CONTROL_FIELDS}, "")
  return flat


def fingerprint(config: ml_collections.ConfigDict) -> str:
  """SHA-256 (hex, 16 chars) of the trajectory-defining fields of ``config``."""
  blob = json.dumps(config_fields(config), sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def open_manager(workdir: str | pathlib.Path, *, keep: int) -> ocp.CheckpointManager:
  """A synchronous CheckpointManager on ``workdir/checkpoints``."""
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: dict[str, Any],
         meta: dict[str, Any]) -> None:
  """Saves ``state`` (a pytree of arrays) and ``meta`` (JSON) at ``step``."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """Restores only the JSON ``meta`` item of checkpoint ``step``."""
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
  """Restores the ``state`` item into the shapes/shardings of ``abstract_state``."""
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"]


def check_fingerprint(meta: dict[str, Any], config: ml_collections.ConfigDict,
                      where: str) -> None:
  """Raises ValueError if the checkpoint ``meta`` was written by another config."""
  if meta.get("fingerprint") == fingerprint(config):
    return
  old = meta.get("config_fields", {})
  new = config_fields(config)
  diffs = [f"{k}: checkpoint {old.get(k, '<absent>')!r} vs config {new.get(k, '<absent>')!r}"
           for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
  raise ValueError(
      f"cannot resume from {where}: it was written by a different config (fingerprint "
      f"{meta.get('fingerprint')} vs {fingerprint(config)}); differing fields: "
      + ("; ".join(diffs) or "<none recorded>")
      + ". Use a fresh --workdir, or restore the original config.")


def abstract_like(tree: Any, shardings: Any) -> Any:
  """``jax.ShapeDtypeStruct`` tree with the given shardings (a restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


class CheckpointRefused(Exception):
  """Raised by a restore callback for a checkpoint that must not be skipped (another config)."""


def _one_line(e: BaseException) -> str:
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  return f"{type(e).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def restore_newest_intact(manager: ocp.CheckpointManager,
                          restore: Callable[[int], Any]) -> tuple[int, Any] | None:
  """Restores the newest checkpoint ``restore(step)`` can read; falls back past damaged ones.

  Each damaged step (truncated data, empty or missing metadata, a missing ``state/``...)
  costs one warning line, and its folder is moved aside to ``<step>.damaged-<time>`` (kept
  for inspection, out of orbax's way so the run can save that step again). ``restore`` raising
  :class:`CheckpointRefused` (e.g. a checkpoint of another config) stops the search: its
  ``__cause__`` is raised.

  Returns:
    ``(step, restored)``, or ``None`` when there is no checkpoint at all.

  Raises:
    ValueError: checkpoints exist but none is intact (naming each and why).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  with quiet_orbax_errors():
    return _restore_first(manager, restore, steps)


def _restore_first(manager, restore, steps):
  damaged = []
  for step in steps:
    try:
      restored = restore(step)
      if damaged:
        manager.reload()  # the damaged steps moved aside: saving them again is allowed
      return step, restored
    except CheckpointRefused as e:
      raise e.__cause__ from None
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds)
      folder = pathlib.Path(manager.directory) / str(step)
      aside = folder.with_name(f"{step}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
      try:
        os.rename(folder, aside)
        where = f"moved to {aside.name}"
      except OSError:
        where = "left in place"
      damaged.append(f"step {step} ({_one_line(e)})")
      _log.warning("checkpoint step %d in %s is damaged (%s); %s; trying the previous one.",
                   step, manager.directory, _one_line(e), where)
  manager.reload()
  raise ValueError(f"{manager.directory}: no intact checkpoint: " + "; ".join(damaged)
                   + ". Remove the folder to start afresh.")
