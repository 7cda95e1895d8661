"""Quantized checkpoints: the jaxparams safetensors layout, orbax, and the HF GPTQ layout.

jaxparams layout (version 1)
----------------------------
A folder written atomically by :class:`jaxparams.io.SafetensorsWriter`
(``model.safetensors``, or shards plus ``model.safetensors.index.json``) and a
JSON file ``jaxparams_quant.json``. Each tensor has a *name* (a tree path such as
``layers_0/attn/query/kernel``, or an HF name such as
``encoder.layer.0.attention.self.query.weight``):

* a full-precision tensor is stored under its name, unchanged;
* a quantized tensor (a :class:`~jaxparams.quant.QArray` ``W[K, N]``) is stored as

  ===================  =====================  ==============================================
  tensor               dtype, shape           content
  ===================  =====================  ==============================================
  ``<name>.qcodes``    U32 ``[ceil(K/P), N]``  packed codes (:mod:`jaxparams.quant.packing`);
                       U8 ``[K, N]``           fp8 kinds: the fp8 bytes; rf8: the codes
  ``<name>.qscale``    F32 ``[K/G, N]``        scales
  ``<name>.qzero``     F32 ``[K/G, N]``        zero points in code units (absent if None)
  ``<name>.qg_idx``    I32 ``[K]``             group of each row (absent if None)
  ``<name>.qinput_scale`` F32 ``[K]``          AWQ only: the weight stored is ``W * s[:, None]``
                                               and the layer divides its input by ``s``
  ===================  =====================  ==============================================

``jaxparams_quant.json`` is::

  {"format": "jaxparams.quant", "version": 1,
   "tensors": {"<name>": {"shape": [K, N], "bits": 4, "group_size": 128, "kind": "int",
                          "dtype": "float32", "method": "gptq",
                          "transpose": false, "orig_shape": [K, N]}}}

``transpose: true`` means the full-precision tensor of that name is
``dequantize().T`` (HF ``nn.Linear`` weights ``[out, in]``); ``orig_shape`` is the
shape of that full-precision tensor. A ``config.json`` (and tokenizer files) may
sit beside them, so an HF folder stays recognisable.

Orbax: :func:`save_quantized_orbax` writes ``<dir>/arrays`` (orbax, each QArray as
a dict ``{codes, scale[, zero][, g_idx]}``) and ``<dir>/jaxparams_quant.json``
(the same JSON as above, keyed by tree path), atomically.

Files: the encoding of one tensor (entry, parts, decoding) is :mod:`jaxparams.quant.qentry`,
this module the folder (save, load, iterate); orbax is :mod:`jaxparams.quant.checkpoint_orbax`,
the streaming layout writer :mod:`jaxparams.quant.layout_writer` and dequantizing a folder
:mod:`jaxparams.quant.dequantize` (the entry and orbax names are re-exported here).

HF GPTQ layout (in :mod:`jaxparams.quant.gptq_format`; AutoGPTQ / GPTQModel / transformers)
--------------------------------------------------------------------------------
For an HF Linear ``<p>.weight`` ``[N, K]``: ``<p>.qweight`` int32 ``[K*bits/32, N]``
(codes packed along K as one LSB-first bit stream; for 2/4/8 bits identical to our
``codes``), ``<p>.qzeros`` int32 ``[K/G, N*bits/32]`` (``zero - 1`` packed along N,
the v1 convention; ``gptq_v2`` stores ``zero``), ``<p>.scales`` float16
``[K/G, N]``, ``<p>.g_idx`` int32 ``[K]``; ``quantize_config.json`` (and
``config.json['quantization_config']``) hold ``bits``, ``group_size``,
``desc_act``, ``sym``, ``quant_method: "gptq"``, ``checkpoint_format``.

Example:
  >>> import jax, tempfile, os
  >>> from jaxparams.quant.rtn import rtn, RTNConfig
  >>> qa = rtn(jax.random.normal(jax.random.key(0), (64, 8)), RTNConfig(bits=4, group_size=32))
  >>> d = os.path.join(tempfile.mkdtemp(), 'q')
  >>> save_quantized({'dense': {'kernel': qa}}, d)
  >>> back = load_quantized(d)
  >>> bool((back['dense']['kernel'].codes == qa.codes).all())
  True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxparams import io as jio
from jaxparams import tree as jtree
from jaxparams.quant import card as qcard
from jaxparams.quant.gptq_format import (_iter_gptq, export_gptq, gptq_config,  # noqa: F401
                                         gptq_encode, gptq_pack, gptq_summary, gptq_unpack,
                                         import_gptq)
from jaxparams.quant.checkpoint_orbax import load_quantized_orbax, save_quantized_orbax
from jaxparams.quant.qentry import read_layout as _read_layout
from jaxparams.quant.qentry import (FORMAT, SUFFIXES, VERSION, _FP8, _decode, _encode,  # noqa: F401
                                    _expected_shapes, _is_int, _meta, check_entry, dequantize_leaf,
                                    encode_parts, layout_entry)
from jaxparams.quant.qformat import GPTQ_CONFIG_FILE, LAYOUT_FILE, config_quant, is_quant

__all__ = [
    "LAYOUT_FILE", "GPTQ_CONFIG_FILE", "save_quantized", "load_quantized", "load_quantized_flat",
    "save_quantized_orbax", "load_quantized_orbax", "export_gptq", "import_gptq", "detect_layout",
    "dequantize_flat", "gptq_pack", "gptq_unpack", "is_quant", "layout_entry", "encode_parts",
    "dequantize_leaf", "iter_quantized", "gptq_encode", "gptq_summary", "gptq_config",
]

_SUFFIXES = SUFFIXES


# ----------------------------------------------------------------------------- helpers
def _flat(tree_or_flat: Any) -> dict[str, Any]:
  """A flat ``{name: leaf}`` dict as is, else ``jp.tree.flatten`` with QArray leaves."""
  if isinstance(tree_or_flat, Mapping) and not any(isinstance(v, Mapping)
                                                   for v in tree_or_flat.values()):
    return dict(tree_or_flat)
  return jtree.flatten(tree_or_flat, is_leaf=_is_quant)


_is_quant = is_quant  # old private name


# ----------------------------------------------------------------------------- ours
def save_quantized(tree: Any, out_dir: str | Path, *, transpose: Mapping[str, bool] | None = None,
                   methods: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None,
                   copy_from: str | Path | None = None, overwrite: bool = False,
                   max_shard_bytes: float = 5e9, extra_json: Mapping[str, Any] | None = None,
                   extra_files: Sequence[str] = ()) -> None:
  """Writes a tree (or ``{name: leaf}`` dict) with QArray leaves in the jaxparams layout.

  Args:
    tree: a pytree whose leaves are arrays or :class:`QArray`, or a flat dict by name.
    out_dir: folder to create (atomic; nothing is left on error).
    transpose: ``{name: True}`` for quantized tensors whose full-precision form is the
      transpose (HF Linear weights).
    methods: optional ``{name: method}`` recorded in the JSON.
    config: optional ``config.json`` content; written with a ``quantization_config``
      that transformers refuses (:mod:`jaxparams.quant.card`) and a ``README.md`` card.
    copy_from: folder whose tokenizer files (and ``extra_files``) are copied.
    overwrite: replace an existing folder.
    max_shard_bytes: shard size.
    extra_json: ``{filename: object}`` written as JSON beside the tensors.
    extra_files: more file names copied from ``copy_from`` when present.
  """
  flat = _flat(tree)
  transpose = dict(transpose or {})
  methods = dict(methods or {})
  entries = {}
  with jio.SafetensorsWriter(out_dir, overwrite=overwrite, max_shard_bytes=max_shard_bytes,
                             metadata={"format": "pt", "jaxparams_quant_version": str(VERSION)}
                             ) as w:
    for name, leaf in flat.items():
      if name.endswith(_SUFFIXES):
        raise ValueError(f"save_quantized: tensor name {name!r} ends with a reserved suffix "
                         f"{_SUFFIXES}")
      if _is_quant(leaf):
        entries[name] = layout_entry(leaf, transpose=bool(transpose.get(name, False)),
                                     method=methods.get(name))
        for part, arr in _encode(leaf).items():
          w.add(f"{name}.{part}", arr)
      else:
        w.add(name, np.asarray(jax.device_get(leaf)))
    w.write_json(LAYOUT_FILE, {"format": FORMAT, "version": VERSION, "tensors": entries})
    if config is not None:   # a quantization_config transformers refuses, and a card
      w.write_json("config.json", {**dict(config),
                                   "quantization_config": qcard.quantization_config(VERSION)})
      counts: dict[str, int] = {}
      for e in entries.values():
        counts[e.get("method", "?")] = counts.get(e.get("method", "?"), 0) + 1
      src = Path(copy_from).resolve().name if copy_from is not None else str(
          config.get("_name_or_path") or config.get("model_type") or "a model")
      (w.folder_tmp / "README.md").write_text(qcard.model_card(src, counts))
    for fn, obj in (extra_json or {}).items():
      w.write_json(fn, obj)
    if copy_from is not None:
      w.copy_from(copy_from)
      for fn in extra_files:  # may sit in a sub-folder (sentence-transformers' 1_Pooling/)
        if (Path(copy_from) / fn).is_file():
          (w.folder_tmp / fn).parent.mkdir(parents=True, exist_ok=True)
          w.copy_from(copy_from, [fn])


def load_quantized_flat(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a jaxparams-layout folder as ``({name: QArray | np.ndarray}, layout_json)``.

  Raises:
    ValueError: not the jaxparams layout (an HF GPTQ folder is named as such), a
      missing part, or a part whose shape/dtype disagrees with the JSON.
  """
  folder = Path(path)
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder}: no such folder")
  layout = _read_layout(folder)
  qmeta = layout["tensors"]
  out: dict[str, Any] = {}
  with jio.open_checkpoint(folder) as reader:
    names = reader.names()
    present = set(names)
    for name, m in qmeta.items():
      parts = {}
      for suf in _SUFFIXES:
        if name + suf in present:
          parts[suf[1:]] = np.array(reader.read(name + suf))
      out[name] = _decode(name, m, parts, str(folder))
    owned = {name + suf for name in qmeta for suf in _SUFFIXES}
    for n in names:
      if n in owned:
        continue
      if n.endswith(_SUFFIXES):
        raise ValueError(f"{folder}: tensor {n!r} looks like a quantized part but "
                         f"{LAYOUT_FILE} has no entry {n.rsplit('.', 1)[0]!r} (mismatched layout)")
      out[n] = np.array(reader.read(n))
  return out, layout


def load_quantized(path: str | Path) -> Any:
  """Reads a jaxparams-layout folder as a nested dict (names split on ``/``)."""
  flat, _ = load_quantized_flat(path)
  return jtree.unflatten(flat)


def dequantize_flat(flat: Mapping[str, Any], layout: Mapping[str, Any] | None = None,
                    dtype: Any = None) -> dict[str, np.ndarray]:
  """Full-precision ``{name: np.ndarray}``: QArrays dequantized (transposed and reshaped back
  to their stored ``orig_shape`` when the layout says so)."""
  meta = (layout or {}).get("tensors", {})
  return {name: dequantize_leaf(leaf, meta.get(name, {}), dtype) if _is_quant(leaf)
          else np.asarray(leaf) for name, leaf in flat.items()}


def iter_quantized(path: str | Path):
  """Yields ``(name, QArray | np.ndarray, layout_entry)`` of a quantized folder, one tensor at a
  time (jaxparams or HF GPTQ layout; GPTQ tensors get ``{'transpose': True}``).

  Raises:
    ValueError: not a quantized checkpoint, or a mismatched layout.
  """
  folder = Path(path)
  kind = detect_layout(folder)
  if kind == "gptq":
    yield from _iter_gptq(folder)
    return
  layout = _read_layout(folder)
  qmeta = layout["tensors"]
  with jio.open_checkpoint(folder) as reader:
    names = reader.names()
    present = set(names)
    owned = {name + suf for name in qmeta for suf in _SUFFIXES}
    for n in names:
      if n.endswith(_SUFFIXES) and n not in owned:
        raise ValueError(f"{folder}: tensor {n!r} looks like a quantized part but "
                         f"{LAYOUT_FILE} has no entry {n.rsplit('.', 1)[0]!r} (mismatched layout)")
    for name, m in qmeta.items():
      parts = {suf[1:]: np.array(reader.read(name + suf)) for suf in _SUFFIXES
               if name + suf in present}
      yield name, _decode(name, m, parts, str(folder)), m
    for n in names:
      if n not in owned:
        yield n, reader.read(n), {}


def detect_layout(path: str | Path) -> str:
  """``'jaxparams'``, ``'gptq'`` or ``'plain'`` (an unquantized checkpoint) for a folder."""
  folder = Path(path)
  if (folder / LAYOUT_FILE).is_file():
    return "jaxparams"
  if (folder / GPTQ_CONFIG_FILE).is_file() or config_quant(folder):
    return "gptq"
  return "plain"
