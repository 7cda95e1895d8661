"""Hugging Face safetensors checkpoints <-> Flax params for the reference models.

``from_hf`` reads ``config.json``, checks it against the checkpoint headers, dispatches on
``model_type`` through the family registry (:mod:`jaxparams.models.families`), and
streams tensors one at a time through :func:`jaxparams.io.open_checkpoint`, transposing Linear
weights (HF ``[out, in]`` -> Flax ``[in, out]``). ``to_hf`` writes HF names through
:class:`jaxparams.io.SafetensorsWriter` (atomic, sharded) plus ``config.json``.

Example:
  >>> import jax, jax.numpy as jnp, tempfile, os
  >>> import jaxparams as jp
  >>> cfg = jp.models.LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
  ...     num_hidden_layers=1, num_attention_heads=2)
  >>> params = jp.models.Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 2), int))['params']
  >>> out = os.path.join(tempfile.mkdtemp(), 'tiny')
  >>> jp.models.to_hf(params, cfg, out)
  >>> module, params2, cfg2 = jp.models.from_hf(out)
  >>> cfg2 == cfg and jp.tree.allclose(params, params2, rtol=0)
  True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import io as jio
from jaxparams import tree as jtree
from jaxparams.models.families import FAMILIES, Family, family_for_config
from jaxparams.models.hf_open import open_hf

__all__ = ["from_hf", "to_hf", "hf_name_map", "model_for_config", "ARCHITECTURES",
           "SENTENCE_TRANSFORMERS_FILES"]

# model_type -> Family record (the registry lives in jaxparams.models.families).
ARCHITECTURES = FAMILIES

# sentence-transformers side files (copied by ``to_hf(..., copy_from=...)`` when present).
SENTENCE_TRANSFORMERS_FILES = jio.SENTENCE_TRANSFORMERS_FILES


def _arch_for_config(config: Any) -> Family:
  return family_for_config(config)


def hf_name_map(config: Any) -> dict[str, tuple[str, bool]]:
  """Maps each Flax param path to ``(hf_tensor_name, transpose)`` for this config.

  ``transpose`` is True for Linear kernels (Flax ``[in, out]`` = HF ``weight.T``).

  Example:
    >>> from jaxparams.models import LlamaConfig
    >>> cfg = LlamaConfig(vocab_size=8, hidden_size=4, intermediate_size=8,
    ...                   num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=True)
    >>> hf_name_map(cfg)['layers_0/mlp/down_proj/kernel']
    ('model.layers.0.mlp.down_proj.weight', True)
  """
  return _arch_for_config(config).name_map(config)


def model_for_config(config: Any, *, dot: Callable | None = None):
  """The Flax module for a config of any registered family (``Llama``, ``Gemma``, ``Bert``)."""
  return _arch_for_config(config).module_cls(config, dot=dot)


def _abstract_params(module) -> dict[str, jax.ShapeDtypeStruct]:
  ids = jnp.zeros((1, 2), jnp.int32)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), ids))
  return jtree.flatten(shapes["params"])


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return out


def from_hf(path: str | Path, *, dtype: Any = None, strict: bool = True,
            dot: Callable | None = None, **config_overrides: Any):
  """Loads an HF safetensors checkpoint into a reference Flax model.

  Args:
    path: HF folder (``config.json`` + ``model.safetensors`` or sharded index) or a
      ``.safetensors`` file with ``config.json`` beside it.
    dtype: cast every parameter to this dtype; ``None`` keeps the stored dtypes.
    strict: raise on checkpoint tensors the model does not use (else skip them).
    dot: matmul injected into the module's Linear layers.
    **config_overrides: config fields to override (e.g. ``dtype='bfloat16'`` for compute).

  Returns:
    ``(module, params, config)`` where ``params`` is the ``'params'`` collection (nested dict of
    ``jax.Array``); run with ``module.apply({'params': params}, input_ids)``.

  Raises:
    ValueError: unknown ``model_type``; a ``config.json`` field of the wrong type or size, or
      one the checkpoint's headers contradict (checked before any model is built, see
      :func:`jaxparams.models.config_check.check_hf_config`); a missing, unexpected or
      wrongly-shaped tensor (named, with its file).
  """
  path = Path(path)
  with open_hf(path, purpose="from_hf") as ck:
    reader, arch, by_norm, where = ck.reader, ck.family, ck.by_norm, ck.where
    model_type = ck.model_type
    config = ck.model_config(**config_overrides)
    module = arch.module_cls(config, dot=dot)
    nmap = arch.name_map(config)
    try:
      expected = _abstract_params(module)
    except (TypeError, ValueError, KeyError, ZeroDivisionError, OverflowError) as e:
      raise ValueError(f"{where}: invalid {model_type} config: {e}") from None

    missing = [hf for hf, _ in nmap.values() if hf not in by_norm]
    if missing:
      raise ValueError(f"{path}: checkpoint is missing {len(missing)} tensor(s) needed by "
                       f"{type(module).__name__} ({arch.name}): {missing[:8]}"
                       + (" ..." if len(missing) > 8 else ""))
    used = {hf for hf, _ in nmap.values()}
    unexpected = [by_norm[n] for n in by_norm if n not in used and not arch.ignored(config, n)]
    if unexpected and strict:
      files = sorted({str(reader.spec(n).file) for n in unexpected})
      raise ValueError(f"{', '.join(files)}: unexpected tensor(s) {unexpected[:8]}"
                       + (" ..." if len(unexpected) > 8 else "")
                       + " not used by the model (pass strict=False to skip them)")

    # Check every shape from the headers before reading any data.
    for fpath, (hf, transpose) in nmap.items():
      spec = reader.spec(by_norm[hf])
      shape = tuple(spec.shape[::-1]) if transpose else tuple(spec.shape)
      want = tuple(expected[fpath].shape)
      if shape != want:
        want_hf = want[::-1] if transpose else want
        raise ValueError(f"{spec.file}: tensor {by_norm[hf]!r} has shape {tuple(spec.shape)}, "
                         f"expected {want_hf} for Flax path {fpath!r} (config {model_type})")

    flat = {}
    for fpath, (hf, transpose) in nmap.items():
      a = reader.read(by_norm[hf])
      if transpose:
        a = a.T
      arr = jnp.asarray(a) if dtype is None else jnp.asarray(a, dtype=dtype)
      flat[fpath] = arr
  return module, _nest(flat), config


def to_hf(params: Any, config: Any, out_dir: str | Path, *,
          max_shard_bytes: float = 5e9, copy_from: str | Path | None = None,
          overwrite: bool = False, dtype: Any = None, check_outputs: bool = False) -> None:
  """Writes Flax params as an HF checkpoint folder (safetensors + ``config.json``).

  Args:
    params: the ``'params'`` collection (or ``{'params': ...}``) of a reference model.
    config: its config (any registered family, e.g. :class:`LlamaConfig`, ``Qwen2Config``).
    out_dir: output folder, created atomically.
    max_shard_bytes: shard size limit (HF index written when sharded).
    copy_from: the folder the model was loaded from (or any HF folder): its tokenizer and
      sentence-transformers files are copied, and so are its tensors that are no parameter of
      the model (buffers such as BERT's ``embeddings.position_ids``), so the output has every
      tensor of the source and merges with it. A stored tied copy (an untied-looking
      ``lm_head.weight`` of a tied model) is written with the new value of the tensor it copies.
    overwrite: replace an existing ``out_dir``.
    dtype: cast every tensor to this dtype before writing (``None`` keeps dtypes).
    check_outputs: refuse a tensor with NaN/Inf (after the cast), naming it, before anything
      is published (:func:`jaxparams.io.check_output_tensor`; ``edit`` turns it on).

  Raises:
    ValueError: a parameter is missing, extra, not a plain array (e.g. a quantized ``QArray``:
      dequantize first), or has the wrong shape.
  """
  arch = _arch_for_config(config)
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]
  if arch.before_write is not None:
    params, config = arch.before_write(params, config)
  flat = jtree.flatten(params)
  nmap = arch.name_map(config)
  expected = _abstract_params(arch.module_cls(config))
  missing = [p for p in nmap if p not in flat]
  if missing:
    hint = ""
    if any(any(k.startswith(p + "/") for k in flat) for p in missing):
      hint = " (some are not plain arrays, e.g. quantized QArray leaves: dequantize them first)"
    raise ValueError(f"to_hf({out_dir}): params lack {len(missing)} leaf/leaves: {missing[:8]}"
                     + hint)
  extra = [p for p in flat if p not in nmap]
  if extra:
    raise ValueError(f"to_hf({out_dir}): params have leaves with no HF name for this config: "
                     f"{extra[:8]}")
  for p, (hf, _) in nmap.items():
    if tuple(np.shape(flat[p])) != tuple(expected[p].shape):
      raise ValueError(f"to_hf({out_dir}): leaf {p!r} (HF {hf!r}) has shape "
                       f"{tuple(np.shape(flat[p]))}, expected {tuple(expected[p].shape)}")
  with jio.SafetensorsWriter(out_dir, max_shard_bytes=max_shard_bytes,
                             overwrite=overwrite, check_outputs=check_outputs) as w:
    for p, (hf, transpose) in nmap.items():
      a = np.asarray(jax.device_get(flat[p]))
      if dtype is not None:
        a = a.astype(dtype)
      if arch.write_name is not None:
        hf = arch.write_name(config, hf)
      w.add(hf, np.ascontiguousarray(a.T) if transpose else a)
    cfg = config.to_hf_dict()
    first = flat[next(iter(nmap))]
    cfg["torch_dtype"] = str(np.dtype(dtype) if dtype is not None else np.asarray(first).dtype)
    w.write_json("config.json", cfg)
    if copy_from is not None:
      w.copy_from(copy_from)
      w.copy_from(copy_from, SENTENCE_TRANSFORMERS_FILES)
      _copy_source_tensors(w, copy_from, arch, config, flat, nmap, dtype)


def _has_checkpoint(folder: Path) -> bool:
  return folder.is_dir() and (any(folder.glob("*.safetensors"))
                              or (folder / jio.INDEX_NAME).is_file())


def _copy_source_tensors(w: Any, src: str | Path, arch: Family, config: Any, flat: dict,
                         nmap: dict, dtype: Any) -> list[str]:
  """Writes the source's tensors that ``to_hf`` did not (buffers, tied copies); returns them."""
  src = Path(src)
  if not _has_checkpoint(src):
    return []
  written = {arch.write_name(config, hf) if arch.write_name is not None else hf
             for hf, _ in nmap.values()}
  norm_written = {arch.normalize(n) for n in written}
  by_hf = {hf: (p, t) for p, (hf, t) in nmap.items()}
  copied = []
  with jio.open_checkpoint(src) as r:
    norm_src = {arch.normalize(n): n for n in r.names()}
    for name in r.names():
      if name in written or arch.normalize(name) in norm_written:
        continue
      a = r.read(name)
      # A tied copy (equal to a parameter in the source) gets that parameter's new value.
      for hf, (p, t) in by_hf.items() if a.ndim == 2 and a.shape[0] > 1 else ():
        other = norm_src.get(hf)
        if other is None or tuple(r.spec(other).shape) != tuple(a.shape):
          continue
        if np.array_equal(r.read(other), a):
          new = np.asarray(jax.device_get(flat[p]))
          a = np.ascontiguousarray(new.T) if t else new
          if dtype is not None:
            a = a.astype(dtype)
          break
      w.add(name, np.asarray(a))
      copied.append(name)
  return copied
