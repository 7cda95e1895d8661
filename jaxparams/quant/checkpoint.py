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
(the same JSON as above, keyed by tree path).

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

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import io as jio
from jaxparams import tree as jtree
from jaxparams.quant import card as qcard
from jaxparams.quant import packing
from jaxparams.quant.gptq_format import (_iter_gptq, export_gptq, gptq_config,  # noqa: F401
                                         gptq_encode, gptq_pack, gptq_summary, gptq_unpack,
                                         import_gptq)
from jaxparams.quant.qarray import QArray
from jaxparams.quant.qformat import GPTQ_CONFIG_FILE, LAYOUT_FILE, config_quant, is_quant

__all__ = [
    "LAYOUT_FILE", "GPTQ_CONFIG_FILE", "save_quantized", "load_quantized", "load_quantized_flat",
    "save_quantized_orbax", "load_quantized_orbax", "export_gptq", "import_gptq", "detect_layout",
    "dequantize_flat", "gptq_pack", "gptq_unpack", "is_quant", "layout_entry", "encode_parts",
    "dequantize_leaf", "iter_quantized", "gptq_encode", "gptq_summary", "gptq_config",
]

FORMAT = "jaxparams.quant"
VERSION = 1
_SUFFIXES = (".qcodes", ".qscale", ".qzero", ".qg_idx", ".qinput_scale")
_FP8 = {"fp8_e4m3": jnp.float8_e4m3fn, "fp8_e5m2": jnp.float8_e5m2}


# ----------------------------------------------------------------------------- helpers
def _flat(tree_or_flat: Any) -> dict[str, Any]:
  """A flat ``{name: leaf}`` dict as is, else ``jp.tree.flatten`` with QArray leaves."""
  if isinstance(tree_or_flat, Mapping) and not any(isinstance(v, Mapping)
                                                   for v in tree_or_flat.values()):
    return dict(tree_or_flat)
  return jtree.flatten(tree_or_flat, is_leaf=_is_quant)


_is_quant = is_quant  # old private name


def layout_entry(q: Any, *, transpose: bool = False, method: str | None = None) -> dict[str, Any]:
  """The ``jaxparams_quant.json`` entry of one quantized tensor."""
  shape = _meta(q)["shape"]
  orig = list(shape[::-1]) if transpose else list(shape)
  return _meta(q, transpose=bool(transpose), orig_shape=orig,
               **({"method": method} if method is not None else {}))


def encode_parts(q: Any) -> dict[str, np.ndarray]:
  """``{part: array}`` stored for one quantized tensor (``qcodes``, ``qscale``, ...)."""
  return _encode(q)


def _meta(q: Any, **extra: Any) -> dict[str, Any]:
  qa = q if isinstance(q, QArray) else q.qarray
  m = {"shape": list(qa.shape), "bits": qa.bits, "group_size": qa.group_size, "kind": qa.kind,
       "dtype": qa.dtype, **extra}
  if not isinstance(q, QArray):
    m["input_scale"] = True
    m["awq_ratio"] = float(np.asarray(jax.device_get(q.ratio)))
  return m


def _encode(q: Any) -> dict[str, np.ndarray]:
  if not isinstance(q, QArray):
    out = _encode(q.qarray)
    out["qinput_scale"] = np.asarray(jax.device_get(q.input_scale), np.float32)
    return out
  qa = q
  codes = np.asarray(jax.device_get(qa.codes))
  if qa.kind in _FP8:
    codes = codes.view(np.uint8)
  out = {"qcodes": codes, "qscale": np.asarray(jax.device_get(qa.scale), np.float32)}
  if qa.zero is not None:
    out["qzero"] = np.asarray(jax.device_get(qa.zero), np.float32)
  if qa.g_idx is not None:
    out["qg_idx"] = np.asarray(jax.device_get(qa.g_idx), np.int32)
  return out


def _expected_shapes(m: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  k, n = int(m["shape"][0]), int(m["shape"][1])
  g = int(m["group_size"])
  if m["kind"] in _FP8 or m["kind"] == "rf8":
    codes = (k, n)
  else:
    codes = (packing.packed_rows(k, int(m["bits"])), n)
  return {"qcodes": codes, "qscale": (k // g if g else 0, n), "qzero": (k // g if g else 0, n),
          "qg_idx": (k,), "qinput_scale": (k,)}


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def check_entry(name: str, m: Any, where: str) -> None:
  """Validates the types and ranges of one tensor entry of the layout JSON (a tampered or
  hand-edited file gives this ``ValueError``, naming the file, tensor and field).

  Example:
    >>> check_entry('w', {'shape': [4, 2], 'bits': 4, 'group_size': 2, 'kind': 'int',
    ...                   'dtype': 'float32'}, 'q')
    >>> check_entry('w', {'shape': [4, None], 'bits': 4, 'group_size': 2, 'kind': 'int',
    ...                   'dtype': 'float32'}, 'q')
    Traceback (most recent call last):
    ...
    ValueError: q/jaxparams_quant.json: tensor 'w': 'shape' must be two positive integers, got [4, None]
  """
  at = f"{where}/{LAYOUT_FILE}: tensor {name!r}"
  if not isinstance(m, Mapping):
    raise ValueError(f"{at}: entry must be a JSON object, got {type(m).__name__}")
  for key in ("shape", "bits", "group_size", "kind", "dtype"):
    if key not in m:
      raise ValueError(f"{at}: lacks {key!r}")
  shape = m["shape"]
  if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(v) and 0 < v < 2**40
                                                               for v in shape)):
    raise ValueError(f"{at}: 'shape' must be two positive integers, got {shape!r:.60}")
  if not (_is_int(m["bits"]) and m["bits"] in (2, 3, 4, 8)):
    raise ValueError(f"{at}: 'bits' must be 2, 3, 4 or 8, got {m['bits']!r:.40}")
  if not (_is_int(m["group_size"]) and 0 < m["group_size"] < 2**40):
    raise ValueError(f"{at}: 'group_size' must be a positive integer, got {m['group_size']!r:.40}")
  if not isinstance(m["kind"], str):
    raise ValueError(f"{at}: 'kind' must be a string, got {m['kind']!r:.40}")
  try:
    np.dtype(m["dtype"]) if isinstance(m["dtype"], str) and m["dtype"] != "bfloat16" else None
  except TypeError:
    raise ValueError(f"{at}: 'dtype' {m['dtype']!r:.40} is not a dtype name") from None
  if not isinstance(m["dtype"], str):
    raise ValueError(f"{at}: 'dtype' must be a dtype name, got {m['dtype']!r:.40}")
  for key in ("transpose", "input_scale"):
    if key in m and not isinstance(m[key], bool):
      raise ValueError(f"{at}: {key!r} must be true or false, got {m[key]!r:.40}")
  if "orig_shape" in m and not (isinstance(m["orig_shape"], list) and
                                all(_is_int(v) and v >= 0 for v in m["orig_shape"]) and
                                int(np.prod(m["orig_shape"], dtype=np.int64)) == shape[0] * shape[1]):
    raise ValueError(f"{at}: 'orig_shape' {m['orig_shape']!r:.60} does not hold {shape[0]} x "
                     f"{shape[1]} values")
  if "awq_ratio" in m and not isinstance(m["awq_ratio"], (int, float)):
    raise ValueError(f"{at}: 'awq_ratio' must be a number, got {m['awq_ratio']!r:.40}")


def _decode(name: str, m: Mapping[str, Any], parts: Mapping[str, np.ndarray], where: str) -> Any:
  """Rebuilds a QArray from its stored parts, checking every shape against the metadata."""
  check_entry(name, m, where)
  kind = m["kind"]
  if kind not in ("int", "nf4", "rf8", *_FP8):
    raise ValueError(f"{where}: tensor {name!r} has unknown kind {kind!r}")
  k, n = int(m["shape"][0]), int(m["shape"][1])
  g = int(m["group_size"])
  if g < 1 or k % g:
    raise ValueError(f"{where}: tensor {name!r}: group_size {g} does not divide K={k}")
  want = _expected_shapes(m)
  for part in ("qcodes", "qscale"):
    if part not in parts:
      raise ValueError(f"{where}: quantized tensor {name!r} lacks {name}.{part}")
  for part, arr in parts.items():
    if tuple(arr.shape) != want[part]:
      raise ValueError(f"{where}: {name}.{part} has shape {tuple(arr.shape)}, expected "
                       f"{want[part]} for a {m['bits']}-bit {kind} tensor of shape {(k, n)} with "
                       f"group_size {g} (mismatched layout)")
  codes = parts["qcodes"]
  if kind in _FP8:
    if codes.dtype != np.uint8:
      raise ValueError(f"{where}: {name}.qcodes must be U8 for {kind}, got {codes.dtype}")
    codes = jnp.asarray(codes.view(np.dtype(_FP8[kind])))
  elif kind == "rf8":
    if codes.dtype != np.uint8:
      raise ValueError(f"{where}: {name}.qcodes must be U8 for rf8, got {codes.dtype}")
    codes = jnp.asarray(codes)
  else:
    if codes.dtype not in (np.uint32, np.int32):
      raise ValueError(f"{where}: {name}.qcodes must be U32 packed words, got {codes.dtype}")
    codes = jnp.asarray(codes.view(np.uint32))
  zero = parts.get("qzero")
  g_idx = parts.get("qg_idx")
  if bool(m.get("input_scale")) != ("qinput_scale" in parts):
    raise ValueError(f"{where}: {name}: {LAYOUT_FILE} says input_scale={bool(m.get('input_scale'))}"
                     f" but {name}.qinput_scale is {'present' if 'qinput_scale' in parts else 'absent'}"
                     " (mismatched layout)")
  qa = QArray(codes=codes, scale=jnp.asarray(parts["qscale"], jnp.float32),
                zero=None if zero is None else jnp.asarray(zero, jnp.float32),
                shape=(k, n), bits=int(m["bits"]), group_size=g, kind=kind,
                dtype=str(m["dtype"]), g_idx=None if g_idx is None else jnp.asarray(g_idx,
                                                                                 jnp.int32))
  if "qinput_scale" in parts:
    from jaxparams.quant.awq import AWQResult  # pylint: disable=g-import-not-at-top
    return AWQResult(qarray=qa, input_scale=jnp.asarray(parts["qinput_scale"], jnp.float32),
                     ratio=jnp.float32(m.get("awq_ratio", float("nan"))))
  return qa


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


def _read_layout(folder: Path) -> dict[str, Any]:
  f = folder / LAYOUT_FILE
  if not f.is_file():
    if (folder / GPTQ_CONFIG_FILE).is_file() or config_quant(folder):
      raise ValueError(f"{folder}: this is an HF GPTQ checkpoint ({GPTQ_CONFIG_FILE}), not the "
                       f"jaxparams layout; read it with jaxparams.quant.import_gptq")
    raise ValueError(f"{folder}: no {LAYOUT_FILE}; not a jaxparams quantized checkpoint")
  try:
    layout = json.loads(f.read_text())
  except ValueError as e:
    raise ValueError(f"{f}: not valid JSON ({e})") from None
  if not isinstance(layout, dict):
    raise ValueError(f"{f}: must be a JSON object")
  if layout.get("format") != FORMAT or not isinstance(layout.get("tensors"), dict):
    raise ValueError(f"{f}: expected format {FORMAT!r} with a 'tensors' dict, got "
                     f"format={layout.get('format')!r}")
  if not _is_int(layout.get("version")) or layout.get("version") != VERSION:
    raise ValueError(f"{f}: layout version {layout.get('version')!r} is not supported "
                     f"(supported: {VERSION})")
  return layout


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


def dequantize_leaf(leaf: Any, meta: Mapping[str, Any], dtype: Any = None) -> np.ndarray:
  """The stored full-precision tensor of one quantized leaf: ``dequantize()``, transposed and
  reshaped back to ``orig_shape`` when its layout entry says so."""
  w = np.asarray(leaf.dequantize(dtype))
  if meta.get("transpose"):
    w = w.T
  if "orig_shape" in meta:
    w = w.reshape(meta["orig_shape"])
  return np.ascontiguousarray(w)


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


# ----------------------------------------------------------------------------- orbax
def save_quantized_orbax(tree: Any, path: str | Path, *, overwrite: bool = False) -> None:
  """Saves a tree with QArray leaves through orbax (``<path>/arrays`` + ``<path>/`` JSON)."""
  path = Path(path)
  jio.check_output_dir(path, overwrite)
  flat = jtree.flatten(tree, is_leaf=_is_quant)
  arrays, entries = {}, {}
  for name, leaf in flat.items():
    if _is_quant(leaf):
      entries[name] = _meta(leaf)
      arrays[name] = {k[1:]: v for k, v in _encode(leaf).items()}
    else:
      arrays[name] = leaf
  path.mkdir(parents=True, exist_ok=True)
  nested = jtree.unflatten({f"{n}/{k}" if isinstance(v, dict) else n: vv
                            for n, v in arrays.items()
                            for k, vv in (v.items() if isinstance(v, dict) else [(None, v)])})
  jio.save_orbax(nested, path / "arrays", overwrite=overwrite)
  (path / LAYOUT_FILE).write_text(json.dumps({"format": FORMAT, "version": VERSION,
                                              "tensors": entries}, indent=2) + "\n")


def load_quantized_orbax(path: str | Path) -> Any:
  """Restores :func:`save_quantized_orbax` output as a nested dict with QArray leaves."""
  path = Path(path)
  layout = _read_layout(path)
  restored = jtree.flatten(jio.restore_orbax(path / "arrays"))
  out: dict[str, Any] = {}
  qmeta = layout["tensors"]
  for name, m in qmeta.items():
    parts = {f"q{k}": np.asarray(restored.pop(f"{name}/{k}"))
             for k in ("codes", "scale", "zero", "g_idx", "input_scale")
             if f"{name}/{k}" in restored}
    out[name] = _decode(name, m, parts, str(path))
  out.update(restored)
  return jtree.unflatten(out)


def detect_layout(path: str | Path) -> str:
  """``'jaxparams'``, ``'gptq'`` or ``'plain'`` (an unquantized checkpoint) for a folder."""
  folder = Path(path)
  if (folder / LAYOUT_FILE).is_file():
    return "jaxparams"
  if (folder / GPTQ_CONFIG_FILE).is_file() or config_quant(folder):
    return "gptq"
  return "plain"
