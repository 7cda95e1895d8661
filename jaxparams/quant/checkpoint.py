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
                       U8 ``[K, N]``           fp8 kinds: the fp8 bytes
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

HF GPTQ layout (AutoGPTQ / GPTQModel / transformers, ``checkpoint_format`` "gptq")
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
from jaxparams.quant import packing
from jaxparams.quant.qarray import QArray

__all__ = [
    "LAYOUT_FILE", "GPTQ_CONFIG_FILE", "save_quantized", "load_quantized", "load_quantized_flat",
    "save_quantized_orbax", "load_quantized_orbax", "export_gptq", "import_gptq", "detect_layout",
    "dequantize_flat", "gptq_pack", "gptq_unpack", "is_quant", "layout_entry", "encode_parts",
    "dequantize_leaf", "iter_quantized", "gptq_encode", "gptq_summary", "gptq_config",
]

LAYOUT_FILE = "jaxparams_quant.json"
GPTQ_CONFIG_FILE = "quantize_config.json"
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


def is_quant(x: Any) -> bool:
  """A QArray, or an AWQ result (``qarray`` + ``input_scale``)."""
  return isinstance(x, QArray) or (isinstance(getattr(x, "qarray", None), QArray)
                                   and hasattr(x, "input_scale"))


_is_quant = is_quant


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
  if m["kind"] in _FP8:
    codes = (k, n)
  else:
    codes = (packing.packed_rows(k, int(m["bits"])), n)
  return {"qcodes": codes, "qscale": (k // g if g else 0, n), "qzero": (k // g if g else 0, n),
          "qg_idx": (k,), "qinput_scale": (k,)}


def _decode(name: str, m: Mapping[str, Any], parts: Mapping[str, np.ndarray], where: str) -> Any:
  """Rebuilds a QArray from its stored parts, checking every shape against the metadata."""
  for key in ("shape", "bits", "group_size", "kind", "dtype"):
    if key not in m:
      raise ValueError(f"{where}: entry {name!r} of {LAYOUT_FILE} lacks {key!r}")
  kind = m["kind"]
  if kind not in ("int", "nf4", *_FP8):
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
    config: optional ``config.json`` content.
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
    if config is not None:
      w.write_json("config.json", dict(config))
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
    if (folder / GPTQ_CONFIG_FILE).is_file() or _config_quant(folder):
      raise ValueError(f"{folder}: this is an HF GPTQ checkpoint ({GPTQ_CONFIG_FILE}), not the "
                       f"jaxparams layout; read it with jaxparams.quant.import_gptq")
    raise ValueError(f"{folder}: no {LAYOUT_FILE}; not a jaxparams quantized checkpoint")
  try:
    layout = json.loads(f.read_text())
  except ValueError as e:
    raise ValueError(f"{f}: not valid JSON ({e})") from None
  if layout.get("format") != FORMAT or not isinstance(layout.get("tensors"), dict):
    raise ValueError(f"{f}: expected format {FORMAT!r} with a 'tensors' dict, got "
                     f"format={layout.get('format')!r}")
  if int(layout.get("version", -1)) != VERSION:
    raise ValueError(f"{f}: layout version {layout.get('version')!r} is not supported "
                     f"(supported: {VERSION})")
  return layout


def _config_quant(folder: Path) -> dict | None:
  cfg = folder / "config.json"
  if cfg.is_file():
    try:
      q = json.loads(cfg.read_text()).get("quantization_config")
    except ValueError:
      return None
    if isinstance(q, dict) and q.get("quant_method") == "gptq":
      return q
  return None


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


# ----------------------------------------------------------------------------- HF GPTQ
def gptq_pack(q: np.ndarray, bits: int, axis: int = 0) -> np.ndarray:
  """GPTQ ``qweight``/``qzeros`` words: :func:`jaxparams.quant.packing.pack_stream`.

  Example:
    >>> hex(int(gptq_pack(np.arange(8).reshape(8, 1), 4).view(np.uint32)[0, 0]))
    '0x76543210'
  """
  if (np.shape(q)[axis] * bits) % 32:
    raise ValueError(f"gptq_pack: {np.shape(q)[axis]} codes of {bits} bits do not fill whole "
                     "32-bit words")
  return packing.pack_stream(q, bits, axis)


def gptq_unpack(words: np.ndarray, bits: int, count: int, axis: int = 0) -> np.ndarray:
  """Inverse of :func:`gptq_pack` (:func:`jaxparams.quant.packing.unpack_stream`)."""
  if np.shape(words)[axis] * 32 != count * bits:
    raise ValueError(f"gptq_unpack: {np.shape(words)[axis]} words hold "
                     f"{np.shape(words)[axis] * 32 // bits} codes of {bits} bits, expected {count}")
  return packing.unpack_stream(words, bits, count, axis)


def gptq_encode(name: str, qa: Any, *, checkpoint_format: str = "gptq",
                scale_dtype: Any = np.float16) -> dict[str, np.ndarray]:
  """The HF GPTQ tensors (``<p>.qweight/.qzeros/.scales/.g_idx``) of one ``<p>.weight`` QArray.

  Raises:
    ValueError: AWQ results, non-int kinds, bad names or bits, fractional or out-of-range zeros,
      shapes that do not fill int32 words.
  """
  if is_quant(qa) and not isinstance(qa, QArray):
    raise ValueError(f"export_gptq: {name!r} is AWQ-quantized (weight scaled by an input scale); "
                     "the GPTQ layout cannot hold it")
  if qa.kind != "int":
    raise ValueError(f"export_gptq: the GPTQ layout holds integer codes only, got kind "
                     f"{qa.kind!r} for {name!r}")
  b = qa.bits
  if b not in (2, 3, 4, 8):
    raise ValueError(f"export_gptq: unsupported bits {b}")
  if not name.endswith(".weight"):
    raise ValueError(f"export_gptq: quantized tensor {name!r} must be an HF '<prefix>.weight'")
  maxq = 2 ** b - 1
  prefix = name[: -len(".weight")]
  k, n = qa.shape
  zero = _gptq_zero(qa)
  if not np.all(zero == np.round(zero)) or zero.min() < 0 or zero.max() > maxq:
    raise ValueError(f"export_gptq: {name!r} has non-integer or out-of-range zero points "
                     f"(e.g. HQQ); the GPTQ layout needs integer zeros in [0, {maxq}]")
  q = np.asarray(qa.unpacked_codes())
  g_idx = (np.arange(k, dtype=np.int32) // qa.group_size if qa.g_idx is None
           else np.asarray(qa.g_idx, np.int32))
  if b == 3 and (k % 32 or n % 32):
    raise ValueError(f"export_gptq: 3-bit {name!r} needs K and N multiples of 32, got {(k, n)}")
  if (n * b) % 32:
    raise ValueError(f"export_gptq: {name!r}: N={n} at {b} bits does not fill int32 words")
  z = zero.astype(np.int64)
  if checkpoint_format == "gptq":
    z = (z - 1) & maxq
  return {prefix + ".qweight": gptq_pack(q, b, axis=0), prefix + ".qzeros": gptq_pack(z, b, axis=1),
          prefix + ".scales": np.asarray(qa.scale).astype(scale_dtype), prefix + ".g_idx": g_idx}


def _gptq_zero(qa: QArray) -> np.ndarray:
  return (np.full(qa.scale.shape, 2 ** (qa.bits - 1), np.float64) if qa.zero is None
          else np.asarray(qa.zero, np.float64))


def gptq_summary(name: str, qa: Any) -> dict[str, Any]:
  """What one quantized tensor says about the checkpoint-wide GPTQ config (see :func:`gptq_config`)."""
  if is_quant(qa) and not isinstance(qa, QArray):
    raise ValueError(f"export_gptq: {name!r} is AWQ-quantized (weight scaled by an input scale); "
                     "the GPTQ layout cannot hold it")
  k = qa.shape[0]
  desc = qa.g_idx is not None and not np.array_equal(np.asarray(qa.g_idx),
                                                     np.arange(k) // qa.group_size)
  return {"bits": qa.bits, "kind": qa.kind,
          "group": qa.group_size if qa.group_size != k else -1,
          "sym": bool(np.all(_gptq_zero(qa) == 2 ** (qa.bits - 1))), "desc_act": bool(desc)}


def gptq_config(summaries: Mapping[str, Mapping[str, Any]], *, checkpoint_format: str = "gptq",
                true_sequential: bool = True, damp_percent: float = 0.01) -> dict[str, Any]:
  """The ``quantize_config`` of a GPTQ checkpoint from :func:`gptq_summary` of every tensor.

  Raises:
    ValueError: no quantized tensor, mixed bits or group sizes, non-int kinds.
  """
  if not summaries:
    raise ValueError("export_gptq: no quantized tensor to export")
  kinds = {s["kind"] for s in summaries.values()}
  if kinds != {"int"}:
    raise ValueError(f"export_gptq: the GPTQ layout holds integer codes only, got kinds {kinds}")
  bits = {s["bits"] for s in summaries.values()}
  if len(bits) != 1:
    raise ValueError(f"export_gptq: all tensors must share bits, got {sorted(bits)}")
  groups = {s["group"] for s in summaries.values()}
  if len(groups) != 1:
    raise ValueError(f"export_gptq: all tensors must share group_size, got {sorted(groups)}")
  return {"bits": bits.pop(), "group_size": groups.pop(),
          "desc_act": any(s["desc_act"] for s in summaries.values()),
          "sym": all(s["sym"] for s in summaries.values()),
          "true_sequential": true_sequential, "damp_percent": damp_percent,
          "static_groups": False, "checkpoint_format": checkpoint_format,
          "quant_method": "gptq", "pack_dtype": "int32"}


def export_gptq(flat: Mapping[str, Any], out_dir: str | Path, *, config: Mapping[str, Any] | None
                = None, copy_from: str | Path | None = None, scale_dtype: Any = np.float16,
                checkpoint_format: str = "gptq", true_sequential: bool = True,
                damp_percent: float = 0.01, overwrite: bool = False) -> dict[str, Any]:
  """Writes an HF GPTQ checkpoint from ``{hf_name: QArray | array}``.

  Quantized entries must be named ``<prefix>.weight``; their QArray is the flax
  ``[K, N]`` view (``weight.T``). All must share bits and group size, be kind
  ``'int'`` with integer zero points (HQQ's fractional zeros do not fit).

  Returns:
    The ``quantize_config`` dict written.

  Raises:
    ValueError: mixed bits/group sizes, non-int kinds, fractional zeros, bad names, 3-bit
      tensors whose K or N is not a multiple of 32.
  """
  if checkpoint_format not in ("gptq", "gptq_v2"):
    raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
  qs = {n: v for n, v in flat.items() if is_quant(v)}
  qcfg = gptq_config({n: gptq_summary(n, v) for n, v in qs.items()},
                     checkpoint_format=checkpoint_format, true_sequential=true_sequential,
                     damp_percent=damp_percent)
  tensors: dict[str, np.ndarray] = {}
  for name, qa in qs.items():
    tensors.update(gptq_encode(name, qa, checkpoint_format=checkpoint_format,
                               scale_dtype=scale_dtype))
  for name, v in flat.items():
    if not isinstance(v, QArray):
      tensors[name] = np.asarray(jax.device_get(v))
  with jio.SafetensorsWriter(out_dir, overwrite=overwrite) as w:
    for name, arr in tensors.items():
      w.add(name, arr)
    w.write_json(GPTQ_CONFIG_FILE, qcfg)
    if config is not None:
      w.write_json("config.json", {**dict(config), "quantization_config": qcfg})
    if copy_from is not None:
      w.copy_from(copy_from)
  return qcfg


def import_gptq(path: str | Path, *, dtype: str | None = None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads an HF GPTQ checkpoint as ``({hf_name: QArray | np.ndarray}, quantize_config)``.

  Each ``<p>.qweight/qzeros/scales/g_idx`` becomes ``<p>.weight`` as a QArray (flax
  ``[K, N]`` view; the HF weight is its transpose). ``g_idx`` is kept only when it
  is not the plain ``k // group_size``.

  Raises:
    ValueError: no GPTQ config, unsupported bits, missing parts, or shapes that
      disagree with ``bits``/``group_size`` (mismatched layout).
  """
  folder = Path(path)
  qcfg = _gptq_config_of(folder)
  out = {name: leaf for name, leaf, _ in _iter_gptq(folder, dtype=dtype, copy=True)}
  return out, qcfg


def _gptq_config_of(folder: Path) -> dict[str, Any]:
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder}: no such folder")
  cfg_file = folder / GPTQ_CONFIG_FILE
  if cfg_file.is_file():
    qcfg = json.loads(cfg_file.read_text())
  else:
    qcfg = _config_quant(folder)
    if qcfg is None:
      hint = (" (it is a jaxparams layout; use load_quantized)" if (folder / LAYOUT_FILE).is_file()
              else "")
      raise ValueError(f"{folder}: no {GPTQ_CONFIG_FILE} nor config.json quantization_config "
                       f"with quant_method 'gptq'; not an HF GPTQ checkpoint{hint}")
  b = int(qcfg.get("bits", -1))
  if b not in (2, 3, 4, 8):
    raise ValueError(f"{folder}: GPTQ bits={qcfg.get('bits')!r} unsupported; supported 2, 3, 4, 8")
  fmt = qcfg.get("checkpoint_format", "gptq")
  if fmt not in ("gptq", "gptq_v2"):
    raise ValueError(f"{folder}: checkpoint_format {fmt!r} unsupported; supported 'gptq', "
                     "'gptq_v2'")
  return qcfg


def _iter_gptq(folder: Path, *, dtype: str | None = None, copy: bool = False):
  """Yields ``(name, QArray | array, {'transpose': True} | {})`` of an HF GPTQ folder."""
  qcfg = _gptq_config_of(folder)
  b = int(qcfg["bits"])
  fmt = qcfg.get("checkpoint_format", "gptq")
  maxq = 2 ** b - 1
  with jio.open_checkpoint(folder) as reader:
    names = reader.names()
    present = set(names)
    cfg_dtype = dtype or (reader.config() or {}).get("torch_dtype") or "float16"
    prefixes = [n[: -len(".qweight")] for n in names if n.endswith(".qweight")]
    if not prefixes:
      raise ValueError(f"{folder}: GPTQ config present but no '*.qweight' tensor")
    owned = set()
    for p in prefixes:
      for part in ("qweight", "qzeros", "scales", "g_idx"):
        nm = f"{p}.{part}"
        if nm not in present and part != "g_idx":
          raise ValueError(f"{folder}: GPTQ tensor {p!r} lacks {nm}")
        if nm in present:
          owned.add(nm)
    for p in prefixes:
      parts = {part: np.array(reader.read(f"{p}.{part}")) for part in
               ("qweight", "qzeros", "scales", "g_idx") if f"{p}.{part}" in present}
      qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
      if qweight.ndim != 2 or qweight.dtype.itemsize != 4:
        raise ValueError(f"{folder}: {p}.qweight must be int32 2-D, got {qweight.dtype} "
                         f"{qweight.shape}")
      k, n = qweight.shape[0] * 32 // b, qweight.shape[1]
      group = int(qcfg.get("group_size", -1))
      g = k if group in (-1, 0) else group
      if k % g:
        raise ValueError(f"{folder}: {p}: group_size {g} does not divide K={k} (from qweight "
                         f"{qweight.shape} at {b} bits)")
      ng = k // g
      if scales.shape != (ng, n):
        raise ValueError(f"{folder}: {p}.scales has shape {scales.shape}, expected {(ng, n)} for "
                         f"K={k}, N={n}, bits={b}, group_size={group} (mismatched layout)")
      if qzeros.shape != (ng, n * b // 32):
        raise ValueError(f"{folder}: {p}.qzeros has shape {qzeros.shape}, expected "
                         f"{(ng, n * b // 32)} (mismatched layout)")
      g_idx = parts.get("g_idx")
      if g_idx is not None and g_idx.shape != (k,):
        raise ValueError(f"{folder}: {p}.g_idx has shape {g_idx.shape}, expected {(k,)}")
      q = gptq_unpack(qweight, b, k, axis=0)
      z = gptq_unpack(qzeros, b, n, axis=1).astype(np.int64)
      if fmt == "gptq":
        z = (z + 1) & maxq
      plain = np.arange(k, dtype=np.int32) // g
      keep_gidx = g_idx is not None and not np.array_equal(g_idx.astype(np.int32), plain)
      if keep_gidx and (g_idx.min() < 0 or g_idx.max() >= ng):
        raise ValueError(f"{folder}: {p}.g_idx values outside [0, {ng})")
      yield p + ".weight", QArray(
          codes=packing.pack(jnp.asarray(q), b), scale=jnp.asarray(scales, jnp.float32),
          zero=jnp.asarray(z, jnp.float32), shape=(k, n), bits=b, group_size=g, kind="int",
          dtype=str(np.dtype(cfg_dtype) if cfg_dtype != "bfloat16" else "bfloat16"),
          g_idx=jnp.asarray(g_idx, jnp.int32) if keep_gidx else None), {"transpose": True}
    for nm in names:
      if nm not in owned:
        a = reader.read(nm)
        yield nm, (np.array(a) if copy else a), {}


def detect_layout(path: str | Path) -> str:
  """``'jaxparams'``, ``'gptq'`` or ``'plain'`` (an unquantized checkpoint) for a folder."""
  folder = Path(path)
  if (folder / LAYOUT_FILE).is_file():
    return "jaxparams"
  if (folder / GPTQ_CONFIG_FILE).is_file() or _config_quant(folder):
    return "gptq"
  return "plain"
