"""LoRA extraction: truncated SVD of a fine-tuning delta, per tensor, tree and streamed over HF folders.

Follows ``mergekit-extract-lora`` (mergekit 0.1.5, ``mergekit/scripts/extract_lora.py``):

* per 2-D Linear weight, ``delta = W_ft - W_base``, reduced SVD in float32;
  ``rank = min(max_rank, len(S))``, then ``min(rank, #{S > sv_epsilon})`` when ``sv_epsilon > 0``
  (an **absolute** threshold); we add ``energy=``: the smallest rank keeping that fraction of
  ``sum S^2`` (capped by ``max_rank``), and never go below rank 1;
* ``distribute_scale`` (default): ``A = sqrt(S) Vh``, ``B = U sqrt(S)``; otherwise
  ``A = S Vh``, ``B = U``; the adapter has ``r = lora_alpha = `` the largest realised rank and
  ``rank_pattern = alpha_pattern`` for the other modules (scaling 1 everywhere);
* without ``embed_lora`` the input embedding, the output head and every other embedding table are
  saved whole (the **fine-tuned** tensor) in ``modules_to_save`` when they changed (unlike mergekit,
  a key -- a module's last name -- whose tensors all equal the base is left out: PEFT's copy of the
  base module equals them already; PEFT needs every module of a listed key, so a key with one
  changed module stores all of its modules), keyed by the module's last name
  component; with ``embed_lora`` the input embedding becomes ``lora_embedding_A/B`` (the delta is
  transposed) and the head a Linear LoRA; a vocabulary-size mismatch forces ``modules_to_save``;
* every other tensor with a weight that is not a Linear (RMSNorm/LayerNorm) goes to
  ``modules_to_save`` at full rank when it changed (mergekit does this for norms, changed or not);
  modules named in ``modules_to_save=`` are saved whole, changed or not;
* a Linear's bias delta is saved as ``lora_B.bias``; unlike mergekit we also set ``lora_bias``
  in the config, so PEFT actually loads it (mergekit leaves it unset and PEFT drops the tensor).

The truncation error of a module is the Eckart-Young optimum ``||delta - B A||_F = sqrt(sum of
the dropped S^2)`` (returned in the report). The SVDs run under jit on the default device (a
GPU/TPU when present). Both the tree function and the streaming one run the ``lora_extract``
record (:mod:`jaxparams.adapt.records`; its checks: equal shapes, float, NaN/Inf). The streaming
extraction holds one (base, fine-tuned) pair at a time.

Example:
  >>> import jax, jax.numpy as jnp
  >>> d = jax.random.normal(jax.random.key(0), (6, 2)) @ jax.random.normal(jax.random.key(1), (2, 5))
  >>> a, b, info = extract_tensor(d, max_rank=4, sv_epsilon=1e-4)
  >>> a.shape, b.shape, bool(jnp.allclose(a @ b, d, atol=1e-5)), info['rank']
  ((6, 2), (2, 5), True, 2)
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.adapt import peft_io
from jaxparams.adapt.records import LORA_EXTRACT, LoraExtractConfig
from jaxparams.adapt.svd import choose_rank, factorize as _factorize  # noqa: F401

__all__ = ["extract_tensor", "choose_rank", "extract_tree", "extract_checkpoint"]


def _info(s: Any, rank: int) -> dict:
  s_host = np.asarray(s)
  return {"rank": rank, "singular_values": s_host,
          "tail": float(np.sqrt(np.sum(s_host[rank:].astype(np.float64) ** 2)))}


def _run_extract(base, finetuned, cfg, path: str = "", labels=None) -> dict:
  return LORA_EXTRACT(base, (finetuned,), config=cfg, path=path, labels=labels)


def extract_tensor(delta: jax.Array, *, max_rank: int, sv_epsilon: float = 0.0,
                   energy: float | None = None, distribute_scale: bool = True
                   ) -> tuple[jax.Array, jax.Array, dict]:
  """``(a [in, r], b [r, out], info)`` with ``a @ b`` the best rank-r approximation of ``delta``.

  ``delta`` is in Flax orientation (``[in, out]``; PEFT's ``lora_A = a.T``, ``lora_B = b.T``).
  ``info`` has ``rank``, ``singular_values`` and ``tail`` (``sqrt(sum S[r:]^2)``, the Frobenius
  error of the truncation). Runs the ``lora_extract`` record on ``(0, delta)``.
  """
  if delta.ndim != 2:
    raise ValueError(f"extract_tensor needs a 2-D delta, got shape {tuple(delta.shape)}")
  cfg = LoraExtractConfig(max_rank=max_rank, sv_epsilon=sv_epsilon, energy=energy,
                          distribute_scale=distribute_scale)
  out = _run_extract(jnp.zeros_like(delta), delta, cfg)
  return out["a"], out["b"], _info(out["singular_values"], out["a"].shape[1])


def extract_tree(base: Any, finetuned: Any, where: Any, *, max_rank: int,
                 sv_epsilon: float = 0.0, energy: float | None = None,
                 distribute_scale: bool = True) -> tuple[dict, dict[str, dict]]:
  """Extracts an adapter tree (scale 1) for the 2-D leaves chosen by ``where``; returns
  ``(adapter, {path: info})``."""
  from jaxparams import tree as jtree
  fb, ff = jtree.flatten(base), jtree.flatten(finetuned)
  flat, infos = {}, {}
  for path in jtree.select(fb, where, flat=True):
    if path not in ff or tuple(ff[path].shape) != tuple(fb[path].shape):
      raise ValueError(f"extract: {path!r} is missing from the fine-tuned tree or has another "
                       f"shape ({getattr(ff.get(path), 'shape', None)} vs {fb[path].shape})")
    cfg = LoraExtractConfig(max_rank=max_rank, sv_epsilon=sv_epsilon, energy=energy,
                            distribute_scale=distribute_scale)
    out = _run_extract(fb[path], ff[path], cfg, path)
    a, b = out["a"], out["b"]
    info = _info(out["singular_values"], a.shape[1])
    flat[f"{path}/a"], flat[f"{path}/b"] = a, b
    flat[f"{path}/scale"] = jnp.float32(1.0)
    infos[path] = info
  return jtree.unflatten(flat), infos


def _same(a: np.ndarray, b: np.ndarray) -> bool:
  """Bit-equal tensors (same shape and dtype; NaNs in the same places count as equal)."""
  return (a.shape == b.shape and a.dtype == b.dtype
          and np.array_equal(np.ascontiguousarray(a).reshape(-1).view(np.uint8),
                             np.ascontiguousarray(b).reshape(-1).view(np.uint8)))


def _kinds(config: Any) -> dict[str, tuple[str, str, bool]]:
  """``{hf_tensor: (kind, module, transposed)}``: kind 'linear', 'embed', 'head', 'bias', 'other'."""
  from jaxparams.models import hf_name_map
  nmap = hf_name_map(config)
  out = {}
  linear_mods = {hf.rsplit(".", 1)[0] for fp, (hf, t) in nmap.items() if t}
  for fp, (hf, t) in nmap.items():
    mod = hf.rsplit(".", 1)[0]
    if fp.endswith("/embedding"):
      kind = "embed"
    elif fp == "lm_head/kernel":
      kind = "head"
    elif t:
      kind = "linear"
    elif hf.endswith(".bias") and mod in linear_mods:
      kind = "bias"
    else:
      kind = "other"
    out[hf] = (kind, mod, t)
  return out


def extract_checkpoint(base_dir: str | Path, finetuned_dir: str | Path, out_dir: str | Path, *,
                       max_rank: int = 128, sv_epsilon: float = 0.0, energy: float | None = None,
                       distribute_scale: bool = True, embed_lora: bool = False,
                       modules_to_save: Sequence[str] = (), include: Sequence[str] = (),
                       exclude: Sequence[str] = (), skip_undecomposable: bool = False,
                       overwrite: bool = False, progress: Any = None) -> dict[str, Any]:
  """Streams a PEFT LoRA out of (base, fine-tuned) HF folders, as ``mergekit-extract-lora`` does.

  One tensor pair is read (mmap) and decomposed at a time; only the low-rank factors (and the
  ``modules_to_save`` tensors, still memory-mapped) are held until the single
  ``adapter_model.safetensors`` is written, atomically, with ``adapter_config.json``.

  Args:
    base_dir, finetuned_dir: HF checkpoint folders of the same architecture (``llama``/``bert``).
    out_dir: the adapter folder to create.
    max_rank, sv_epsilon, energy, distribute_scale: see :func:`extract_tensor`.
    embed_lora: LoRA for embeddings / head instead of saving them whole.
    modules_to_save: extra module names (full or last component) saved at full rank.
    include, exclude: regexes (``re.search`` on the module name) limiting the LoRA modules.
    skip_undecomposable: do not save norms etc. at full rank.
    progress: optional callable ``progress(name, done, total)`` called before each tensor.

  Returns:
    A report ``{'ranks': {module: r}, 'tails': {module: error}, 'modules_to_save': [...]}``.
  """
  from jaxparams.models.hf_open import open_hf
  base_dir, finetuned_dir = Path(base_dir), Path(finetuned_dir)
  # The one HF opener: both config.json files checked against their headers before use.
  with (open_hf(base_dir, purpose="LoRA extraction") as ckb,
        open_hf(finetuned_dir, purpose="LoRA extraction") as ckf):
    rb, rf, cfg_b, cfg_f, arch = ckb.reader, ckf.reader, ckb.cfg, ckf.cfg, ckf.family
    norm_b = {arch.normalize(n): n for n in rb.names()}
    norm_f = ckf.by_norm
    config = ckf.model_config(detect=("add_pooling_layer",))
    kinds = _kinds(config)
    vocab_b = (cfg_b or {}).get("vocab_size", config.vocab_size)
    if vocab_b != config.vocab_size and embed_lora:
      embed_lora = False  # mergekit: a vocabulary change forces modules_to_save
    mts_keys = list(modules_to_save)
    asked_keys = set(modules_to_save)  # saved whole even when unchanged (the caller asked)
    modules: dict[str, dict[str, Any]] = {}
    mts: dict[str, np.ndarray] = {}
    tails: dict[str, float] = {}
    search = lambda pats, m: any(re.search(p, m) for p in pats)

    # modules_to_save key (a module's last name) -> [(module, changed)]. PEFT wraps every module
    # of a key and needs each one's tensors, so a key is stored whole or left out whole.
    full: dict[str, list[tuple[str, bool]]] = {}

    def save_full(hf: str, mod: str, *, asked: bool = False) -> None:
      changed = asked
      for suffix in (".weight", ".bias"):
        n = mod + suffix
        if not changed and n in norm_f:
          changed = n not in norm_b or not _same(rb.read(norm_b[n]), rf.read(norm_f[n]))
      full.setdefault(mod.rsplit(".", 1)[-1], []).append((mod, changed))

    for i, (hf, (kind, mod, t)) in enumerate(kinds.items()):
      if hf not in norm_f:
        raise ValueError(f"{finetuned_dir}: missing tensor {hf!r}")
      if progress is not None:
        progress(hf, i, len(kinds))
      if kind == "bias":
        continue  # handled with its Linear (or saved with a full module)
      if not hf.endswith(".weight"):
        continue  # a norm's bias: saved with its weight below
      last = mod.rsplit(".", 1)[-1]
      is_emb = kind in ("embed", "head")
      if mod in asked_keys or last in asked_keys:
        save_full(hf, mod, asked=True)
        continue
      if is_emb and not embed_lora and not search(exclude, mod):
        save_full(hf, mod)
        continue
      if last in full:
        save_full(hf, mod)
        continue
      if not (not include or search(include, mod)) or search(exclude, mod):
        continue
      if kind == "other":
        if not skip_undecomposable:
          save_full(hf, mod)
        continue
      if hf not in norm_b:
        raise ValueError(f"{base_dir}: missing tensor {hf!r}")
      wb, wf = rb.read(norm_b[hf]), rf.read(norm_f[hf])
      if wb.shape != wf.shape:
        raise ValueError(f"tensor {hf!r}: base shape {wb.shape} vs fine-tuned {wf.shape}")
      cfg = LoraExtractConfig(max_rank=max_rank, sv_epsilon=sv_epsilon, energy=energy,
                              distribute_scale=distribute_scale, layout="hf",
                              embedding=kind == "embed")
      out = _run_extract(jnp.asarray(wb), jnp.asarray(wf), cfg, hf,
                         (str(base_dir), str(finetuned_dir)))
      info = _info(out["singular_values"], out["lora_A"].shape[0])
      out_dtype = wf.dtype
      m = {"A": np.asarray(out["lora_A"]).astype(out_dtype),
           "B": np.asarray(out["lora_B"]).astype(out_dtype), "scale": 1.0}
      if kind == "embed":
        m["embedding"] = True
      bias = mod + ".bias"
      if kind == "linear" and bias in norm_f:
        m["bias"] = (np.asarray(rf.read(norm_f[bias]), np.float32)
                     - np.asarray(rb.read(norm_b[bias]), np.float32)).astype(out_dtype)
      modules[mod] = m
      tails[mod] = info["tail"]
    # A key whose modules all equal the base is left out (unlike mergekit): PEFT's copy of the
    # base module is the fine-tuned one already.
    for key, mods in full.items():
      if not any(changed for _, changed in mods):
        continue
      if key not in mts_keys:
        mts_keys.append(key)
      for mod, _ in mods:
        for suffix in (".weight", ".bias"):
          if mod + suffix in norm_f:
            mts[mod + suffix] = rf.read(norm_f[mod + suffix])
    mts_keys = [k for k in mts_keys if k in asked_keys or k in full and any(c for _, c in full[k])]
    if not modules:
      raise ValueError("extract: no module was decomposed (check include/exclude)")
    ad = peft_io.PeftAdapter(modules=modules, modules_to_save=mts)
    ranks = {mod: int(m["A"].shape[0]) for mod, m in modules.items()}
    r_max = max(ranks.values())
    others = {m: r for m, r in ranks.items() if r != r_max}
    cfg = {"base_model_name_or_path": str(base_dir), "peft_type": "LORA", "use_rslora": False,
           "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}),
           "modules_to_save": mts_keys or None,
           "task_type": "CAUSAL_LM" if cfg_f.get("model_type") == "llama" else None,
           "r": r_max, "lora_alpha": r_max, "rank_pattern": others, "alpha_pattern": others,
           "lora_dropout": 0.0, "fan_in_fan_out": False, "inference_mode": True,
           "lora_bias": any("bias" in m for m in modules.values()), "bias": "none",
           "use_dora": False}
    peft_io.write_peft(ad, out_dir, overwrite=overwrite, config=cfg)
    if progress is not None:
      progress("done", len(kinds), len(kinds))
  return {"ranks": ranks, "tails": tails, "modules_to_save": mts_keys}
