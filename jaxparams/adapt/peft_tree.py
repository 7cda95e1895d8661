"""PEFT adapters <-> adapter trees: HF module names mapped to a :mod:`jaxparams.models` config.

:func:`to_tree` / :func:`from_tree` convert a :class:`~jaxparams.adapt.peft_format.PeftAdapter`
(the folder format, :mod:`jaxparams.adapt.peft_format`) to and from the adapter trees of
:mod:`jaxparams.adapt.tree_api` (Flax orientation: ``a = A.T``, ``b = B.T``);
:func:`load_peft` / :func:`save_peft` read and write a folder for a model config;
``modules_to_save`` become ``{flax_path: array}`` overrides (:func:`apply_overrides`).

Example:
  >>> import jaxparams as jp
  >>> cfg = jp.models.LlamaConfig(vocab_size=8, hidden_size=4, intermediate_size=8,
  ...     num_hidden_layers=1, num_attention_heads=2)
  >>> module_map(cfg)['model.layers.0.self_attn.q_proj']
  ('layers_0/attn/q_proj/kernel', True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree
from jaxparams.adapt.peft_format import PREFIX, PeftAdapter, make_config, read_peft, write_peft
from jaxparams.adapt.tree_api import entries

__all__ = ["module_map", "to_tree", "from_tree", "apply_overrides", "load_peft", "save_peft"]


def module_map(config: Any) -> dict[str, tuple[str, bool]]:
  """``{hf_module_name: (flax_weight_path, transposed)}`` for a model config's 2-D weights.

  Example:
    >>> import jaxparams as jp
    >>> cfg = jp.models.LlamaConfig(vocab_size=8, hidden_size=4, intermediate_size=8,
    ...     num_hidden_layers=1, num_attention_heads=2)
    >>> module_map(cfg)['model.layers.0.self_attn.q_proj']
    ('layers_0/attn/q_proj/kernel', True)
  """
  from jaxparams.models import hf_name_map
  return {hf.rsplit(".", 1)[0]: (fp, t) for fp, (hf, t) in hf_name_map(config).items()
          if hf.endswith(".weight")}


def _normalize(name: str) -> str:
  from jaxparams.models.hf_bert import strip_prefix
  return strip_prefix(name)


def to_tree(ad: PeftAdapter, config: Any) -> tuple[dict, dict[str, np.ndarray]]:
  """``(adapter_tree, overrides)`` for a model config: LoRA modules as an adapter tree (Flax
  orientation: ``a = A.T``, ``b = B.T``) and ``modules_to_save`` as ``{flax_path: array}``.

  As in PEFT, overrides replace the base tensors *before* the adapter applies (a saved embedding
  table under ``save_embedding_layers`` is the base of that table's LoRA): use
  ``merge(apply_overrides(params, overrides), adapter)``."""
  from jaxparams.models import hf_name_map
  mm = module_map(config)
  flat = {}
  for mod, e in ad.modules.items():
    key = _normalize(mod)
    if key not in mm:
      raise ValueError(f"adapter module {mod!r} is not a 2-D weight of this "
                       f"{type(config).__name__}; known: {sorted(mm)[:6]}...")
    fp, _ = mm[key]
    flat[f"{fp}/a"] = jnp.asarray(e["A"]).T
    flat[f"{fp}/b"] = jnp.asarray(e["B"]).T
    flat[f"{fp}/scale"] = jnp.asarray(e["scale"], jnp.float32)
    if "magnitude" in e:
      flat[f"{fp}/magnitude"] = jnp.asarray(e["magnitude"])
    if "bias" in e:
      flat[f"{fp}/bias"] = jnp.asarray(e["bias"])
  by_hf = {_normalize(hf): (fp, t) for fp, (hf, t) in hf_name_map(config).items()}
  overrides = {}
  for name, arr in ad.modules_to_save.items():
    if _normalize(name) not in by_hf:
      raise ValueError(f"modules_to_save tensor {name!r} is not a tensor of this model")
    fp, t = by_hf[_normalize(name)]
    overrides[fp] = np.asarray(arr).T if t else np.asarray(arr)
  return jtree.unflatten(flat), overrides


def from_tree(adapter: Any, config: Any, *, overrides: Mapping[str, Any] | None = None,
              bias: str = "none") -> PeftAdapter:
  """The :class:`PeftAdapter` of an adapter tree (and optional full-weight overrides).

  With ``bias='all'``/``'lora_only'`` the ``.../bias`` overrides are trained biases, stored as
  PEFT does (``<module>.base_layer.bias`` for adapted modules).
  """
  from jaxparams.models import hf_name_map
  inv = {fp: hf for fp, (hf, _) in hf_name_map(config).items()}
  modules = {}
  for fp, e in entries(adapter).items():
    if fp not in inv:
      raise ValueError(f"adapter module {fp!r} is not a weight of this {type(config).__name__}")
    mod = inv[fp].rsplit(".", 1)[0]
    m = {"A": np.asarray(e["a"]).T, "B": np.asarray(e["b"]).T, "scale": float(e["scale"])}
    if fp.endswith("/embedding"):
      m["embedding"] = True
    if "magnitude" in e:
      m["magnitude"] = np.asarray(e["magnitude"])
    if "bias" in e:
      m["bias"] = np.asarray(e["bias"])
    modules[mod] = m
  mts, stored = {}, {}
  names = hf_name_map(config)
  for fp, arr in (overrides or {}).items():
    if fp not in names:
      raise ValueError(f"override {fp!r} is not a tensor of this {type(config).__name__}")
    hf, t = names[fp]
    mts[hf] = np.asarray(arr).T if t else np.asarray(arr)
    if bias != "none" and hf.endswith(".bias") and hf.rsplit(".", 1)[0] in modules:
      stored[hf] = PREFIX + hf.rsplit(".", 1)[0] + ".base_layer.bias"
  return PeftAdapter(modules=modules, modules_to_save=mts, stored_keys=stored)


def apply_overrides(params: Any, overrides: Mapping[str, Any]) -> Any:
  """``params`` with the ``modules_to_save`` tensors of :func:`to_tree` put in (dtype kept).

  Example:
    >>> import jax.numpy as jnp
    >>> apply_overrides({'n': {'scale': jnp.ones(2)}}, {'n/scale': [3.0, 4.0]})['n']['scale'].tolist()
    [3.0, 4.0]
  """
  flat = dict(jtree.flatten(params))
  for path, arr in overrides.items():
    if path not in flat:
      raise ValueError(f"override {path!r} is not a parameter")
    if tuple(np.shape(arr)) != tuple(flat[path].shape):
      raise ValueError(f"override {path!r}: shape {np.shape(arr)} vs parameter "
                       f"{tuple(flat[path].shape)}")
    flat[path] = jnp.asarray(arr, flat[path].dtype)
  return jtree.unflatten(flat, like=params)


def load_peft(path: str | Path, config: Any) -> tuple[dict, dict[str, np.ndarray]]:
  """Reads a PEFT folder into ``(adapter_tree, overrides)`` for a model config."""
  return to_tree(read_peft(path), config)


def _target_modules(ad: PeftAdapter, config: Any) -> list[str]:
  # Last name components unless they would also select modules the adapter lacks (then full names).
  short = sorted({m.rsplit(".", 1)[-1] for m in ad.modules})
  others = [m for m in module_map(config) if m not in ad.modules]
  if any(m.rsplit(".", 1)[-1] in short for m in others):
    return sorted(ad.modules)
  return short


def save_peft(adapter: Any, config: Any, out_dir: str | Path, *,
              overrides: Mapping[str, Any] | None = None, use_rslora: bool = False,
              overwrite: bool = False, bias: str = "none", **config_fields: Any) -> PeftAdapter:
  """Writes an adapter tree as a PEFT folder for a model config; returns what was written.

  ``overrides`` (``{flax_path: array}``) are written as ``modules_to_save`` tensors, except the
  biases when ``bias`` is ``'all'``/``'lora_only'`` (PEFT's trained biases).
  """
  if bias not in ("none", "all", "lora_only"):
    raise ValueError(f"bias={bias!r}; valid: 'none', 'all', 'lora_only'")
  ad = from_tree(adapter, config, overrides=overrides, bias=bias)
  config_fields["bias"] = bias
  cfg = make_config(ad, use_rslora=use_rslora, target_modules=_target_modules(ad, config),
                    **config_fields)
  write_peft(ad, out_dir, overwrite=overwrite, config=cfg)
  ad.config = cfg
  return ad
