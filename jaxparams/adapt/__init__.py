"""Adapters: LoRA and DoRA as pure tree transforms, PEFT folders in and out, combining, extraction.

* :mod:`~jaxparams.adapt.lora`: the per-tensor math (scaling, delta, merge/unmerge, DoRA norms).
* :mod:`~jaxparams.adapt.tree_api`: adapter trees (``init``, ``merge``, ``unmerge``, ``inject`` +
  ``dot`` for the unmerged forward, ``trainable_mask``).
* :mod:`~jaxparams.adapt.peft_format`: PEFT's ``adapter_config.json`` +
  ``adapter_model.safetensors``; :mod:`~jaxparams.adapt.peft_tree`: those to and from adapter
  trees for a model config (:mod:`~jaxparams.adapt.peft_io` re-exports both).
* :mod:`~jaxparams.adapt.combining`: PEFT's ``add_weighted_adapter`` types and an exact ``linear``.
* :mod:`~jaxparams.adapt.extract`: LoRA extraction by truncated SVD (``mergekit-extract-lora``).
* :mod:`~jaxparams.adapt.stream`: merge a PEFT adapter into an HF checkpoint on disk, streamed.
* :mod:`~jaxparams.adapt.records`: the transform records (``lora_merge``, ``lora_unmerge``,
  ``lora_extract``, ``peft_*``), on the math of :mod:`~jaxparams.adapt.lora`,
  :mod:`~jaxparams.adapt.merge_utils` and :mod:`~jaxparams.adapt.svd`; every caller runs a record
  the one way, ``record(...)`` (checks, apply, verify).
* :mod:`~jaxparams.adapt.finetune`: the LoRA/DoRA model trained by :mod:`jaxparams.train.lora`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxparams as jp
  >>> params = {'dense': {'kernel': jnp.eye(4)}}
  >>> ad = jp.adapt.init(params, '**/kernel', rank=2, alpha=2, key=jax.random.key(0),
  ...                    init_weights=False)
  >>> merged = jp.adapt.merge(params, ad)
  >>> bool(jnp.allclose(jp.adapt.unmerge(merged, ad)['dense']['kernel'], jnp.eye(4), atol=1e-6))
  True
"""

from jaxparams.adapt.lora import (delta, dora_merge_tensor, dora_norm, dora_unmerge_tensor,
                                  init_tensor, merge_tensor, scaling, unmerge_tensor)
from jaxparams.adapt.tree_api import (LoraWeight, dot, dora_norms, entries, init, inject, merge,
                                      scale_adapter, trainable_mask, unmerge)
from jaxparams.adapt.peft_format import PeftAdapter, read_peft, write_peft
from jaxparams.adapt.peft_tree import apply_overrides, from_tree, load_peft, save_peft, to_tree
from jaxparams.adapt.combining import COMBINATION_TYPES, combine
from jaxparams.adapt.stream import merge_checkpoint
from jaxparams.adapt.finetune import LoraFinetuneConfig, full_adapter, split_trainable
from jaxparams.adapt.extract import choose_rank, extract_checkpoint, extract_tensor, extract_tree

__all__ = [
    "delta", "dora_merge_tensor", "dora_norm", "dora_unmerge_tensor", "init_tensor",
    "merge_tensor", "scaling", "unmerge_tensor", "LoraWeight", "dot", "dora_norms", "entries",
    "init", "inject", "merge", "scale_adapter", "trainable_mask", "unmerge", "PeftAdapter",
    "apply_overrides",
    "from_tree", "load_peft", "read_peft", "save_peft", "to_tree", "write_peft", "choose_rank",
    "extract_checkpoint", "extract_tensor", "extract_tree", "COMBINATION_TYPES", "combine",
    "merge_checkpoint", "LoraFinetuneConfig", "full_adapter", "split_trainable",
]


def __getattr__(name: str):
  if name == "train_lora":  # it drives the trainer, a floor above adapt
    raise AttributeError("jaxparams.adapt.train_lora moved to jaxparams.train.lora.train_lora")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
