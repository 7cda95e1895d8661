"""Merge a PEFT adapter into an HF checkpoint on disk, streamed (``jaxparams lora merge``).

Runs the ``lora_merge`` / ``lora_bias_merge`` records (:mod:`jaxparams.adapt.records`, layout
``'hf'``) through the streaming driver (:func:`jaxparams.transform.stream_checkpoints`): one base
tensor (plus its ``lora_A``/``lora_B``) in memory at a time, prefetching, compiled once per
shape, atomic sharded output with the base's ``config.json`` and tokenizer files. Tensors
without an adapter are copied; ``modules_to_save`` tensors replace the base's. Works for any HF
model whose adapter targets Linear / Embedding modules (the tensor names say which); the merge
is computed in float32 and written in the base tensor's dtype.

Example:
  >>> import json, os, tempfile, numpy as np
  >>> import jaxparams as jp
  >>> d = tempfile.mkdtemp()
  >>> jp.io.save_safetensors({'lin.weight': np.eye(2, dtype=np.float32)}, f'{d}/base',
  ...                        config={'model_type': 'toy'})
  >>> ad = jp.adapt.PeftAdapter(modules={'lin': dict(A=np.ones((1, 2), np.float32),
  ...                                                 B=np.ones((2, 1), np.float32), scale=0.5)})
  >>> jp.adapt.write_peft(ad, f'{d}/ad')
  >>> report = merge_checkpoint(f'{d}/base', f'{d}/ad', f'{d}/out')
  >>> jp.io.load_safetensors(f'{d}/out')['lin.weight'].tolist(), report['merged']
  ([[1.5, 0.5], [0.5, 1.5]], 1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from jaxparams import io as jio
from jaxparams import transform as jt
from jaxparams.adapt import peft_io
from jaxparams.adapt.records import (LORA_BIAS_MERGE, LORA_MERGE, LORA_REPLACE, LoraMergeConfig,
                                     ReplaceConfig)

__all__ = ["merge_checkpoint"]


def _norm(name: str) -> str:
  from jaxparams.models.hf_bert import strip_prefix
  return strip_prefix(name)


def merge_checkpoint(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, *,
                     weight: float = 1.0, overwrite: bool = False, dtype: Any = None,
                     max_shard_bytes: float = 5e9,
                     progress: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
  """Writes ``base + adapter`` (PEFT's ``merge_and_unload`` weights) as an HF folder.

  Args:
    base_dir: HF checkpoint folder (safetensors; sharded or not).
    adapter_dir: PEFT adapter folder.
    out_dir: output folder (created atomically).
    weight: multiplies every module's scaling.
    overwrite: replace an existing ``out_dir``.
    dtype: output dtype (default: each base tensor's dtype).
    max_shard_bytes: output shard size.
    progress: ``(done, total, bytes_read)`` callback.

  Returns:
    ``{'merged': n_modules, 'copied': n_tensors, 'replaced': n_modules_to_save}``.

  Raises:
    ValueError: an adapter module or ``modules_to_save`` tensor without a base tensor; shapes
      that do not fit (``modules_to_save`` tensors: the base tensor's shape); a non-float or
      NaN/Inf tensor (any adapter tensor, checked by the records before publishing); the base's
      ``config.json`` failing :func:`~jaxparams.io.read_model_config` (e.g. a symlink outside
      the base folder); the adapter errors of :func:`~jaxparams.adapt.read_peft`.
  """
  base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
  jio.refuse_pickle(base_dir)
  jio.check_output_dir(out_dir, overwrite)
  ad = peft_io.read_peft(adapter_dir)  # validates the config, computes each module's scaling
  weights = jio.resolve_inside(adapter_dir, peft_io.WEIGHTS_NAME, where=str(adapter_dir),
                               what="adapter weights")
  cfg = None  # copied into the output: read strictly, never from outside the base folder
  folder = base_dir if base_dir.is_dir() else base_dir.parent
  if (folder / "config.json").exists() or (folder / "config.json").is_symlink():
    cfg = jio.read_model_config(folder)
  with jio.open_checkpoint(base_dir) as rb, jio.open_checkpoint(weights) as ra:
    by_norm = {_norm(n): n for n in rb.names()}
    tasks, used = [], set()
    mods = {_norm(m): (m, e) for m, e in ad.modules.items()}
    mts = {_norm(n): n for n in ad.modules_to_save}
    for name in rb.names():
      key = _norm(name)
      mod = key.rsplit(".", 1)[0]
      out_dtype = dtype
      if key in mts and not (key.endswith(".weight") and mod in mods):
        src = mts[key]
        tasks.append(jt.StreamTask(
            name, (("base", name), ("adapter", ad.stored_key(src))), LORA_REPLACE,
            ReplaceConfig(), has_base=True, labels=("base", "modules_to_save tensor"),
            out_dtype=out_dtype or rb.spec(name).dtype,
            out_shape=tuple(rb.spec(name).shape)))
        used.add(("mts", key))
      elif key.endswith(".weight") and mod in mods:
        m, e = mods[mod]
        emb = bool(e.get("embedding"))
        ka, kb = (".lora_embedding_A", ".lora_embedding_B") if emb else (".lora_A.weight",
                                                                         ".lora_B.weight")
        # a saved copy of the table itself (PEFT's save_embedding_layers) is the base of the merge
        first = ("adapter", ad.stored_key(mts[key])) if key in mts else ("base", name)
        if key in mts:
          used.add(("mts", key))
          _same_spec(rb.spec(name), ra.spec(ad.stored_key(mts[key])), adapter_dir)
        inputs = [first, ("adapter", peft_io.PREFIX + m + ka),
                  ("adapter", peft_io.PREFIX + m + kb)]
        if "magnitude" in e:
          inputs.append(("adapter", _magnitude_key(ra, m)))
        tasks.append(jt.StreamTask(
            name, tuple(inputs), LORA_MERGE,
            LoraMergeConfig(scale=float(e["scale"]) * weight, layout="hf", embedding=emb),
            has_base=True, labels=("base", "lora_A", "lora_B", "magnitude")[:len(inputs)],
            compute_dtype="float32", out_dtype=out_dtype or rb.spec(name).dtype,
            out_shape=tuple(rb.spec(name).shape)))
        used.add(("mod", mod))
      elif key.endswith(".bias") and mod in mods and "bias" in mods[mod][1]:
        m, e = mods[mod]
        tasks.append(jt.StreamTask(
            name, (("base", name), ("adapter", peft_io.PREFIX + m + ".lora_B.bias")),
            LORA_BIAS_MERGE, LoraMergeConfig(scale=float(e["scale"]) * weight), has_base=True,
            labels=("base", "lora_B.bias"), compute_dtype="float32",
            out_dtype=out_dtype or rb.spec(name).dtype,
            out_shape=tuple(rb.spec(name).shape)))
      else:
        # copied as stored (the driver checks a copy's out_dtype, it does not cast it)
        tasks.append(jt.StreamTask(name, (("base", name),)))
    missing = sorted(m for m in mods if ("mod", m) not in used)
    missing += sorted(n for n in mts if ("mts", n) not in used)
    if missing:
      raise ValueError(f"{adapter_dir}: adapter targets {missing[:5]} but {base_dir} has no "
                       f"such tensor (e.g. {sorted(by_norm)[:3]})")

    def finalize(writer):
      if cfg is not None:
        writer.write_json("config.json", cfg)
      writer.copy_from(base_dir, jio.TOKENIZER_FILES + jio.SENTENCE_TRANSFORMERS_FILES)

    jt.stream_checkpoints(tasks, {"base": rb, "adapter": ra}, out_dir, overwrite=overwrite,
                          max_shard_bytes=max_shard_bytes, finalize=finalize, progress=progress,
                          context=str(adapter_dir))
  return {"merged": sum(1 for k, _ in used if k == "mod"),
          "replaced": sum(1 for k, _ in used if k == "mts"),
          "copied": len(tasks) - len(used)}


def _same_spec(base, new, adapter_dir) -> None:
  """A saved copy of a table that is the base of a merge must match the base tensor."""
  if tuple(base.shape) != tuple(new.shape):
    raise ValueError(f"{adapter_dir}: tensor {new.name!r} has shape {tuple(new.shape)} but the "
                     f"base tensor {base.name!r} has {tuple(base.shape)}")


def _magnitude_key(reader, module: str) -> str:
  for suffix in (".lora_magnitude_vector", ".lora_magnitude_vector.weight"):
    if peft_io.PREFIX + module + suffix in reader:
      return peft_io.PREFIX + module + suffix
  raise ValueError(f"no DoRA magnitude for {module!r}")
