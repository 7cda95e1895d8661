"""The HF GPTQ checkpoint layout (AutoGPTQ / GPTQModel / transformers, ``checkpoint_format`` "gptq").

For an HF Linear ``<p>.weight`` ``[N, K]``: ``<p>.qweight`` int32 ``[K*bits/32, N]``
(codes packed along K as one LSB-first bit stream, :func:`jaxparams.quant.packing.pack_stream`;
for 2/4/8 bits identical to the QArray ``codes``), ``<p>.qzeros`` int32
``[K/G, N*bits/32]`` (``zero - 1`` packed along N, the v1 convention; ``gptq_v2``
stores ``zero``), ``<p>.scales`` float16 ``[K/G, N]``, ``<p>.g_idx`` int32 ``[K]``;
``quantize_config.json`` (and ``config.json['quantization_config']``) hold ``bits``,
``group_size``, ``desc_act``, ``sym``, ``quant_method: "gptq"``, ``checkpoint_format``
(v1 ``"gptq"`` when every tensor is symmetric; ``"gptq_v2"`` otherwise, since v1 cannot
hold a zero point of 0), ``block_name_to_quantize`` and ``modules_in_block_to_quantize``.
Per tensor: :func:`gptq_encode` / :func:`gptq_summary` (the streaming writer uses them);
whole folders: :func:`export_gptq` / :func:`import_gptq`.

Example:
  >>> import numpy as np
  >>> hex(int(gptq_pack(np.arange(8).reshape(8, 1), 4).view(np.uint32)[0, 0]))
  '0x76543210'
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import io as jio
from jaxparams.quant import packing
from jaxparams.quant.qarray import QArray
from jaxparams.quant.qformat import GPTQ_CONFIG_FILE, LAYOUT_FILE, config_quant, is_quant

__all__ = ["gptq_pack", "gptq_unpack", "gptq_encode", "gptq_summary", "gptq_config",
           "export_gptq", "import_gptq", "block_names", "checkpoint_format_for"]

_BLOCK = re.compile(r"^(.+?)\.\d+\.(.+)\.weight$")


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
  if checkpoint_format not in ("gptq", "gptq_v2"):
    raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
  if checkpoint_format == "gptq":
    if z.min() < 1:     # v1 stores z - 1: z = 0 would be -1, read back as 2**bits (overflow)
      raise ValueError(f"export_gptq: {name!r} has zero points of 0 (asymmetric groups with "
                       "min >= 0), which the v1 'gptq' checkpoint format cannot hold (it stores "
                       "zero - 1); write checkpoint_format='gptq_v2'")
    z = z - 1
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
  return {"bits": qa.bits, "kind": qa.kind, "k": k,
          "group": qa.group_size if qa.group_size != k else -1,
          "sym": bool(np.all(_gptq_zero(qa) == 2 ** (qa.bits - 1))), "desc_act": bool(desc)}


def block_names(names: Sequence[str]) -> dict[str, Any]:
  """``block_name_to_quantize`` and ``modules_in_block_to_quantize`` of quantized HF weights.

  Loaders (optimum/transformers) replace every Linear under ``block_name_to_quantize``
  (guessed from a fixed list that misses BERT's ``encoder.layer`` when absent), or only
  those whose names end with an entry of ``modules_in_block_to_quantize``.
  Returns ``{}`` when the names are not all inside one stack of numbered blocks
  (``<blocks>.<i>.<module>.weight``), which GPTQ loaders cannot describe.

  Example:
    >>> block_names(['encoder.layer.0.attention.self.query.weight',
    ...              'encoder.layer.1.attention.self.query.weight', 'encoder.layer.0.output.dense.weight'])
    {'block_name_to_quantize': 'encoder.layer', 'modules_in_block_to_quantize': [['attention.self.query', 'output.dense']]}
  """
  blocks, mods = [], []
  for nm in names:
    m = _BLOCK.match(nm)
    if m is None:
      return {}
    if m.group(1) not in blocks:
      blocks.append(m.group(1))
    if m.group(2) not in mods:
      mods.append(m.group(2))
  if len(blocks) != 1:
    return {}
  return {"block_name_to_quantize": blocks[0], "modules_in_block_to_quantize": [sorted(mods)]}


def checkpoint_format_for(summaries: Mapping[str, Mapping[str, Any]]) -> str:
  """``'gptq'`` (v1) when every tensor is symmetric, else ``'gptq_v2'`` (zeros stored as is)."""
  return "gptq" if all(s["sym"] for s in summaries.values()) else "gptq_v2"


def gptq_config(summaries: Mapping[str, Mapping[str, Any]], *, checkpoint_format: str = "gptq",
                true_sequential: bool = True, damp_percent: float = 0.01) -> dict[str, Any]:
  """The ``quantize_config`` of a GPTQ checkpoint from :func:`gptq_summary` of every tensor.

  Besides the quantization fields it names the blocks (:func:`block_names`) and writes
  the format under both its names (``checkpoint_format``, and ``format`` for newer readers).

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
  return {"bits": bits.pop(), "group_size": _group_size(summaries),
          "desc_act": any(s["desc_act"] for s in summaries.values()),
          "sym": all(s["sym"] for s in summaries.values()),
          "true_sequential": true_sequential, "damp_percent": damp_percent,
          "static_groups": False, "checkpoint_format": checkpoint_format,
          "format": checkpoint_format, "quant_method": "gptq", "pack_dtype": "int32",
          **block_names(list(summaries))}


def _group_size(summaries: Mapping[str, Mapping[str, Any]]) -> int:
  """The one ``group_size`` of the checkpoint: that of the tensors holding several groups.

  A tensor quantized as one group over its whole input axis (summary group ``-1``, e.g. a
  ``K=32`` weight at group size 32) is read the same under any ``group_size >= K``: GPTQ
  loaders give it ``ceil(K / group_size) = 1`` group, ``g_idx`` all zeros. Only when every
  tensor is one group is the checkpoint per-channel (``-1``).

  Raises:
    ValueError: tensors with different group sizes, or a per-channel tensor wider than the
      others' group size.
  """
  groups = sorted({s["group"] for s in summaries.values() if s["group"] != -1})
  if len(groups) > 1:
    raise ValueError(f"export_gptq: all tensors must share group_size, got {groups}")
  if not groups:
    return -1
  wide = sorted(n for n, s in summaries.items() if s["group"] == -1 and s["k"] > groups[0])
  if wide:
    raise ValueError(f"export_gptq: all tensors must share group_size, got [-1, {groups[0]}]: "
                     f"{wide[:3]} are quantized per channel over K > {groups[0]}; quantize "
                     f"them with group_size {groups[0]} too")
  return groups[0]


def export_gptq(flat: Mapping[str, Any], out_dir: str | Path, *, config: Mapping[str, Any] | None
                = None, copy_from: str | Path | None = None, scale_dtype: Any = np.float16,
                checkpoint_format: str | None = None, true_sequential: bool = True,
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
  if checkpoint_format not in (None, "gptq", "gptq_v2"):
    raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
  qs = {n: v for n, v in flat.items() if is_quant(v)}
  summaries = {n: gptq_summary(n, v) for n, v in qs.items()}
  if checkpoint_format is None:
    checkpoint_format = checkpoint_format_for(summaries) if summaries else "gptq"
  qcfg = gptq_config(summaries,
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
      w.copy_from(copy_from, jio.SENTENCE_TRANSFORMERS_FILES)
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
    qcfg = jio.read_json(cfg_file, what=GPTQ_CONFIG_FILE, folder=folder, max_bytes=2**20)
    if not isinstance(qcfg, dict):
      raise ValueError(f"{cfg_file}: {GPTQ_CONFIG_FILE} must be a JSON object, found "
                       f"{jio.text_files.describe(qcfg)}")
  else:
    qcfg = config_quant(folder)
    if qcfg is None:
      hint = (" (it is a jaxparams layout; use load_quantized)" if (folder / LAYOUT_FILE).is_file()
              else "")
      raise ValueError(f"{folder}: no {GPTQ_CONFIG_FILE} nor config.json quantization_config "
                       f"with quant_method 'gptq'; not an HF GPTQ checkpoint{hint}")
  b = int(qcfg.get("bits", -1))
  if b not in (2, 3, 4, 8):
    raise ValueError(f"{folder}: GPTQ bits={qcfg.get('bits')!r} unsupported; supported 2, 3, 4, 8")
  fmt = qcfg.get("checkpoint_format") or qcfg.get("format") or "gptq"
  if fmt not in ("gptq", "gptq_v2"):
    raise ValueError(f"{folder}: checkpoint_format {fmt!r} unsupported; supported 'gptq', "
                     "'gptq_v2'")
  return qcfg


def _float_dtype(reader: Any, names: list[str]) -> str:
  """The most common floating dtype of the full-precision tensors (float16 if none)."""
  count: dict[str, int] = {}
  for nm in names:
    dt = reader.spec(nm).dtype
    dt = jio.to_numpy_dtype(dt) if isinstance(dt, str) else np.dtype(dt)
    if jnp.issubdtype(dt, jnp.floating):
      count[str(dt)] = count.get(str(dt), 0) + 1
  return max(count, key=count.get) if count else "float16"


def _iter_gptq(folder: Path, *, dtype: str | None = None, copy: bool = False):
  """Yields ``(name, QArray | array, {'transpose': True} | {})`` of an HF GPTQ folder."""
  qcfg = _gptq_config_of(folder)
  b = int(qcfg["bits"])
  fmt = qcfg.get("checkpoint_format") or qcfg.get("format") or "gptq"
  with jio.open_checkpoint(folder) as reader:
    names = reader.names()
    present = set(names)
    cfg = reader.config() or {}
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
    cfg_dtype = dtype or cfg.get("torch_dtype") or cfg.get("dtype") or _float_dtype(
        reader, [nm for nm in names if nm not in owned])
    for p in prefixes:
      parts = {part: np.array(reader.read(f"{p}.{part}")) for part in
               ("qweight", "qzeros", "scales", "g_idx") if f"{p}.{part}" in present}
      qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
      if qweight.ndim != 2 or qweight.dtype.itemsize != 4:
        raise ValueError(f"{folder}: {p}.qweight must be int32 2-D, got {qweight.dtype} "
                         f"{qweight.shape}")
      k, n = qweight.shape[0] * 32 // b, qweight.shape[1]
      group = int(qcfg.get("group_size", -1))
      g = k if group in (-1, 0) or group >= k else group   # K <= group_size: one group
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
        z = z + 1         # as the v1 readers do (no wrap: a stored 15 at 4 bit means 16)
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
