"""Quantized trees through orbax: ``<dir>/arrays`` (orbax) + ``<dir>/jaxparams_quant.json``.

Each :class:`~jaxparams.quant.QArray` is saved as a dict ``{codes, scale[, zero][, g_idx]}``
of arrays and described by its :mod:`~jaxparams.quant.qentry` entry, keyed by tree path. The
folder is written atomically (:func:`jaxparams.io.atomic_dir`): on an error or Ctrl-C nothing
is left under ``path``.

Example:
  >>> import jax, tempfile, os
  >>> from jaxparams.quant.rtn import rtn, RTNConfig
  >>> qa = rtn(jax.random.normal(jax.random.key(0), (64, 8)), RTNConfig(bits=4, group_size=32))
  >>> d = os.path.join(tempfile.mkdtemp(), 'o')
  >>> save_quantized_orbax({'dense': {'kernel': qa}}, d)
  >>> bool((load_quantized_orbax(d)['dense']['kernel'].codes == qa.codes).all())
  True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxparams import io as jio
from jaxparams import tree as jtree
from jaxparams.quant.qentry import FORMAT, VERSION, _encode, _meta, decode_entry, read_layout
from jaxparams.quant.qformat import LAYOUT_FILE, is_quant

__all__ = ["save_quantized_orbax", "load_quantized_orbax"]


def save_quantized_orbax(tree: Any, path: str | Path, *, overwrite: bool = False) -> None:
  """Saves a tree with QArray leaves through orbax (``<path>/arrays`` + ``<path>/`` JSON)."""
  path = Path(path)
  jio.check_output_dir(path, overwrite)
  flat = jtree.flatten(tree, is_leaf=is_quant)
  arrays, entries = {}, {}
  for name, leaf in flat.items():
    if is_quant(leaf):
      entries[name] = _meta(leaf)
      arrays[name] = {k[1:]: v for k, v in _encode(leaf).items()}
    else:
      arrays[name] = leaf
  nested = jtree.unflatten({f"{n}/{k}" if isinstance(v, dict) else n: vv
                            for n, v in arrays.items()
                            for k, vv in (v.items() if isinstance(v, dict) else [(None, v)])})
  with jio.atomic_dir(path, overwrite=overwrite) as tmp:   # all or nothing under `path`
    jio.save_orbax(nested, tmp / "arrays")
    (tmp / LAYOUT_FILE).write_text(json.dumps({"format": FORMAT, "version": VERSION,
                                               "tensors": entries}, indent=2) + "\n")


def load_quantized_orbax(path: str | Path) -> Any:
  """Restores :func:`save_quantized_orbax` output as a nested dict with QArray leaves."""
  path = Path(path)
  layout = read_layout(path)
  restored = jtree.flatten(jio.restore_orbax(path / "arrays"))
  out: dict[str, Any] = {}
  qmeta = layout["tensors"]
  for name, m in qmeta.items():
    parts = {f"q{k}": np.asarray(restored.pop(f"{name}/{k}"))
             for k in ("codes", "scale", "zero", "g_idx", "input_scale")
             if f"{name}/{k}" in restored}
    out[name] = decode_entry(name, m, parts, str(path))
  out.update(restored)
  return jtree.unflatten(out)
