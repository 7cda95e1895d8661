"""Loading a checkpoint in either format: safetensors (file or HF folder) or orbax."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxparams.io.orbax_io import restore_orbax
from jaxparams.io.safetensors_reader import open_checkpoint

__all__ = ["is_orbax_dir", "load_any", "orbax_params_dir"]

_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "checkpoint")


def orbax_params_dir(path: str | Path) -> Path:
  """The orbax folder itself: ``path/params`` for a converted folder, else ``path``."""
  path = Path(path)
  return path / "params" if (path / "params").is_dir() else path


def is_orbax_dir(path: str | Path) -> bool:
  """True for an orbax checkpoint folder (or a converted folder with ``params/``).

  Example:
    >>> is_orbax_dir('/nonexistent')
    False
  """
  p = orbax_params_dir(path)
  return p.is_dir() and any((p / n).exists() for n in _ORBAX_MARKERS)


def _is_flat(tree: Any) -> bool:
  return isinstance(tree, dict) and all(not isinstance(v, (dict, list, tuple))
                                        for v in tree.values())


def load_any(path: str | Path) -> tuple[dict[str, Any], Path | None]:
  """Loads a checkpoint fully: ``({name: array}, folder holding config.json or None)``.

  Args:
    path: a ``.safetensors`` file, an HF folder, an orbax folder, or a folder
      written by ``jaxparams convert`` (orbax ``params/`` + config).

  Example:
    >>> import tempfile, os
    >>> from jaxparams.io import save_safetensors
    >>> d = os.path.join(tempfile.mkdtemp(), 'c')
    >>> save_safetensors({'w': np.ones(2, np.float32)}, d)
    >>> flat, folder = load_any(d)
    >>> flat['w'].tolist(), folder.name
    ([1.0, 1.0], 'c')
  """
  path = Path(path)
  if is_orbax_dir(path):
    from jaxparams import tree as jtree  # pylint: disable=import-outside-toplevel
    tree = restore_orbax(orbax_params_dir(path))
    flat = tree if _is_flat(tree) else jtree.flatten(tree)
    return flat, (path if (path / "config.json").is_file() else None)
  with open_checkpoint(path) as ck:
    return {n: a for n, a in ck.items()}, ck.folder
