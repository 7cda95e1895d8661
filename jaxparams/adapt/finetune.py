"""The LoRA / DoRA model the trainer fine-tunes (:mod:`jaxparams.train`), saved in PEFT's format.

The trainer's model family ``'lora'`` (``config.model.name = 'lora'``, fields of
:class:`LoraFinetuneConfig`) is :class:`LoraLM`: a frozen HF base model (loaded from
``config.model.base``) run unmerged through ``dot=jaxparams.adapt.dot``, whose *only* parameters
are the trainable adapter leaves (``a``, ``b``, DoRA ``magnitude``). The scales are constants of
the model, not parameters: the adapter tree is partitioned into trainable and frozen parts, so the
trainer's optimizer, checkpoints and exact resume see nothing else. :func:`save_adapter` writes the
adapter as a PEFT folder, which PEFT loads on the HF base; ``jaxparams.train.lora.train_lora``
runs the trainer and then :func:`save_adapter` (it lives in ``train``, the floor above):

  python -m jaxparams.train.lora --config=configs/lora_llama.py:runlocal --workdir=/tmp/lora

Example:
  >>> cfg = LoraFinetuneConfig(base='path/to/hf_llama', rank=4)
  >>> cfg.alpha, cfg.targets[0]
  (16.0, '**/attn/*_proj/kernel')
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxparams.adapt import lora as L
from jaxparams.adapt import peft_io
from jaxparams.adapt.tree_api import dot as lora_dot
from jaxparams.adapt.tree_api import entries, init as lora_init, inject

__all__ = ["LoraFinetuneConfig", "LoraLM", "make", "split_trainable", "full_adapter",
           "save_adapter"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraFinetuneConfig:
  """What to adapt (``config.model`` of the trainer with ``name='lora'``).

  Attributes:
    base: HF checkpoint folder of the frozen base (a Llama; the trainer's corpus is bytes, so its
      vocabulary must hold the 256 byte values).
    rank, alpha, use_rslora, use_dora: PEFT's ``r``, ``lora_alpha``, ``use_rslora``, ``use_dora``.
    targets: ``where=`` globs of the adapted weights (default: attention and MLP projections).
  """
  base: str
  rank: int = 8
  alpha: float = 16.0
  use_rslora: bool = False
  use_dora: bool = False
  targets: tuple[str, ...] = ("**/attn/*_proj/kernel", "**/mlp/*_proj/kernel")


def split_trainable(adapter: Any) -> tuple[dict, dict]:
  """``(trainable, frozen)``: the adapter tree without its ``scale`` leaves, and ``{path: scale}``.

  Example:
    >>> t, f = split_trainable({'k': {'a': 1., 'b': 2., 'scale': 3.}})
    >>> t, f
    ({'k': {'a': 1.0, 'b': 2.0}}, {'k': 3.0})
    >>> full_adapter(t, f)
    {'k': {'a': 1.0, 'b': 2.0, 'scale': 3.0}}
  """
  from jaxparams.adapt.tree_api import _from_entries
  ents = entries(adapter)
  return (_from_entries({p: {k: v for k, v in e.items() if k != "scale"} for p, e in ents.items()}),
          {p: e["scale"] for p, e in ents.items()})


def full_adapter(trainable: Any, frozen: dict) -> dict:
  """Inverse of :func:`split_trainable` (an adapter tree)."""
  from jaxparams import tree as jtree
  flat = dict(jtree.flatten(trainable))
  for p, s in frozen.items():
    flat[f"{p}/scale"] = s
  return jtree.unflatten(flat)


def _module_paths(trainable: Any) -> list[str]:
  from jaxparams import tree as jtree
  return sorted({p.rpartition("/")[0] for p in jtree.flatten(trainable)})


@functools.lru_cache(maxsize=4)
def _load_base(path: str):
  import numpy as np
  from jaxparams.models import from_hf
  with jax.ensure_compile_time_eval():  # first called inside the trainer's traces: load eagerly
    module, params, config = from_hf(path)
    params = jax.tree.map(np.asarray, params)
  if getattr(config, "vocab_size", 256) < 256:
    raise ValueError(f"{path}: vocab_size {config.vocab_size} < 256; the trainer's corpus is "
                     "bytes")
  return module, params, config


class LoraLM(nn.Module):
  """A frozen base LM plus a trainable LoRA/DoRA; returns the base's logits."""
  config: LoraFinetuneConfig

  @nn.compact
  def __call__(self, ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    c = self.config
    _, base_params, base_cfg = _load_base(c.base)

    def init_fn(key):
      ad = lora_init(base_params, list(c.targets), rank=c.rank, alpha=c.alpha, key=key,
                     use_rslora=c.use_rslora, use_dora=c.use_dora)
      return split_trainable(ad)[0]

    trainable = self.param("adapter", init_fn)
    scale = jnp.float32(L.scaling(c.rank, c.alpha, c.use_rslora))
    adapter = full_adapter(trainable, {p: scale for p in _module_paths(trainable)})
    from jaxparams.models import model_for_config
    model = model_for_config(base_cfg, dot=lora_dot)
    return model.apply({"params": inject(base_params, adapter)}, ids, attention_mask)


def make(config: LoraFinetuneConfig, dot: Any = None) -> LoraLM:
  """The trainer family's ``make``."""
  if dot is not None:
    raise ValueError("model family 'lora' runs its own dot (the LoRA); config.backward must be "
                     "'exact'")
  return LoraLM(config)


def save_adapter(params: Any, config: LoraFinetuneConfig, out_dir: str | pathlib.Path, *,
                 overwrite: bool = False) -> peft_io.PeftAdapter:
  """Writes the trained adapter (the ``'lora'`` family's params) as a PEFT folder."""
  _, _, base_cfg = _load_base(config.base)
  trainable = params["adapter"] if "adapter" in params else params
  scale = jnp.float32(L.scaling(config.rank, config.alpha, config.use_rslora))
  trainable = jax.device_get(trainable)
  adapter = full_adapter(trainable, {p: scale for p in _module_paths(trainable)})
  return peft_io.save_peft(adapter, base_cfg, out_dir, use_rslora=config.use_rslora,
                           overwrite=overwrite, base_model_name_or_path=str(config.base),
                           task_type="CAUSAL_LM")


def __getattr__(name: str):
  if name == "train_lora":  # moved up a floor: it drives the trainer, which imports this module
    raise AttributeError("jaxparams.adapt.finetune.train_lora moved to "
                         "jaxparams.train.lora.train_lora (the trainer is a floor above adapt); "
                         "the command is `python -m jaxparams.train.lora --config=... --workdir=...`")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
