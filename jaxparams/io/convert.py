"""Checkpoint format conversion: safetensors <-> orbax, exact (what ``jaxparams convert`` runs).

A safetensors checkpoint (file, HF folder or sharded index) becomes a folder holding ``params/``
(an orbax checkpoint of the ``{tensor name: array}`` dict) plus ``config.json`` and the
tokenizer files; the reverse direction writes HF safetensors (sharded) with the same tensor
names. The output folder is written atomically.

Example:
  >>> import numpy as np, tempfile, os
  >>> from jaxparams.io import save_safetensors
  >>> d = tempfile.mkdtemp()
  >>> save_safetensors({'w': np.arange(4, dtype=np.float32)}, os.path.join(d, 'st'))
  >>> convert_checkpoint(os.path.join(d, 'st'), os.path.join(d, 'orb'))['to']
  'orbax'
  >>> out = convert_checkpoint(os.path.join(d, 'orb'), os.path.join(d, 'back'))
  >>> out['to'], out['tensors']
  ('safetensors', 1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxparams.io.any_checkpoint import is_orbax_dir, load_any
from jaxparams.io.atomic import atomic_dir, check_output_dir
from jaxparams.io.orbax_io import save_orbax
from jaxparams.io.paths import resolve_inside
from jaxparams.io.pickle_guard import refuse_pickle
from jaxparams.io.safetensors_writer import TOKENIZER_FILES, SafetensorsWriter
from jaxparams.io.sizes import parse_size

__all__ = ["FORMATS", "convert_checkpoint"]

FORMATS = ("auto", "orbax", "safetensors")


def convert_checkpoint(src: str | Path, dst: str | Path, *, to: str = "auto",
                       overwrite: bool = False, max_shard_bytes: int | float | str = "5GB"
                       ) -> dict[str, Any]:
  """Converts ``src`` to the other format (or ``to``) in the new folder ``dst``.

  Args:
    src: a ``.safetensors`` file, an HF folder, a sharded index, or an orbax folder written by
      this function.
    dst: the output folder (atomic).
    to: ``'orbax'``, ``'safetensors'`` or ``'auto'`` (the other one).
    overwrite: replace an existing ``dst``.
    max_shard_bytes: bytes per safetensors shard (``'5GB'``-style or a number).

  Returns:
    ``{'to': format written, 'tensors': count, 'out_dir': dst}``.

  Raises:
    FileNotFoundError: ``src`` is missing.
    FileExistsError: ``dst`` exists and ``overwrite`` is false.
    ValueError: an unknown ``to``, a bad size, a pickle checkpoint.
  """
  src, dst = Path(src), Path(dst)
  if to not in FORMATS:
    raise ValueError(f"unknown target format {to!r}; valid: {', '.join(FORMATS)}")
  if not src.exists():
    raise FileNotFoundError(f"{src}: no such file or folder.")
  refuse_pickle(src)
  shard_bytes = parse_size(max_shard_bytes, what="--max-shard-size")
  if to == "auto":
    to = "safetensors" if is_orbax_dir(src) else "orbax"
  check_output_dir(dst, overwrite)
  flat, folder = load_any(src)
  side_files = ("config.json",) + TOKENIZER_FILES
  if to == "safetensors":
    with SafetensorsWriter(dst, max_shard_bytes=shard_bytes, overwrite=overwrite) as w:
      for n, a in flat.items():
        w.add(n, a)
      w.copy_from(folder, side_files)
  else:
    with atomic_dir(dst, overwrite=overwrite) as tmp:
      save_orbax(flat, tmp / "params")  # waits for orbax's writer even on Ctrl-C
      if folder is not None:
        for fn in side_files:
          src_file = resolve_inside(folder, fn, where=str(folder))
          if src_file.is_file():
            (tmp / fn).write_bytes(src_file.read_bytes())
  return {"to": to, "tensors": len(flat), "out_dir": dst}
