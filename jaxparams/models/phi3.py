"""Phi-3 (``Phi3ForCausalLM``): the :class:`~jaxparams.models.Llama` module with fused
projections and Phi-3's rope.

The Flax model keeps HF's fused ``qkv_proj`` ``[hidden, (nh + 2 nkv) head_dim]`` and
``gate_up_proj`` ``[hidden, 2 intermediate]`` (gate first) as single Linear layers, so the name
map stays one tensor per leaf: quantizers calibrate and write the fused tensors as GPTQ/AWQ
checkpoints of Phi-3 store them, and PEFT adapters target ``qkv_proj``/``gate_up_proj`` as well.
:func:`split_projections` gives the separate q/k/v and gate/up layout (same outputs) for tools
that address those; :func:`~jaxparams.models.to_hf` fuses them again on write.
Rope: ``longrope`` (old name ``su``) short/long factors with their attention factor, and
``partial_rotary_factor``; other scaling types are refused by name. ``sliding_window`` applies to
every layer when set.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models.llama import Llama
  >>> cfg = Phi3Config(vocab_size=16, hidden_size=8, intermediate_size=16,
  ...                  num_hidden_layers=1, num_attention_heads=2)
  >>> p = Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 3), int))['params']
  >>> layer = p['layers_0']
  >>> layer['attn']['qkv_proj']['kernel'].shape, layer['mlp']['gate_up_proj']['kernel'].shape
  ((8, 24), (8, 32))
  >>> Phi3Config.from_hf_dict(cfg.to_hf_dict()) == cfg
  True
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from typing import Any

import jax.numpy as jnp

from jaxparams import tree as jtree
from jaxparams.models.llama import LlamaConfig, _freeze

__all__ = ["Phi3Config", "split_projections", "fuse_projections"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Phi3Config(LlamaConfig):
  """Phi-3 hyperparameters (HF ``config.json`` names); see the module docstring."""
  model_type: ClassVar[str] = "phi3"
  fused_projections: bool = True
  rms_norm_eps: float = 1e-5
  original_max_position_embeddings: int | None = None   # None: max_position_embeddings

  def __post_init__(self):
    super().__post_init__()
    if self.original_max_position_embeddings is None:
      object.__setattr__(self, "original_max_position_embeddings", self.max_position_embeddings)
    scaling = self.rope_scaling_dict
    if scaling is not None and "original_max_position_embeddings" not in scaling:
      scaling["original_max_position_embeddings"] = self.original_max_position_embeddings
      object.__setattr__(self, "rope_scaling", _freeze(scaling))

  @classmethod
  def _family_from_hf(cls, d: dict) -> dict:
    out = {"fused_projections": True, "sliding_window": d.get("sliding_window")}
    if "partial_rotary_factor" in d:
      out.setdefault("partial_rotary_factor", d["partial_rotary_factor"])
    return out

  def to_hf_dict(self) -> dict:
    d = LlamaConfig.to_hf_dict(self)
    rope = {"rope_theta": self.rope_theta, "rope_type": "default", **(self.rope_scaling_dict or {}),
            "partial_rotary_factor": self.partial_rotary_factor}
    if rope["rope_type"] == "su":
      rope["rope_type"] = "longrope"
    d.update(model_type="phi3", architectures=["Phi3ForCausalLM"],
             sliding_window=self.sliding_window, rope_parameters=rope,
             rope_scaling=None if rope["rope_type"] == "default" else rope,
             partial_rotary_factor=self.partial_rotary_factor)
    d["original_max_position_embeddings"] = self.original_max_position_embeddings
    for k in ("attention_bias", "mlp_bias", "head_dim"):
      del d[k]
    return d


def _sizes(config: LlamaConfig) -> tuple[list[int], list[int]]:
  hd, nh, nkv = config.head_dim_, config.num_attention_heads, config.num_key_value_heads
  return [nh * hd, nkv * hd, nkv * hd], [config.intermediate_size] * 2


def split_projections(params: Any, config: LlamaConfig) -> tuple[dict, LlamaConfig]:
  """Fused ``qkv_proj``/``gate_up_proj`` -> ``q/k/v_proj`` and ``gate/up_proj`` (Llama layout).

  For tools that address the separate projections (e.g. adapters on ``q_proj``). The returned
  config has ``fused_projections=False`` and runs the same function; :func:`to_hf` fuses such
  params back on write (HF Phi-3 stores only the fused tensors).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxparams.models.llama import Llama
    >>> cfg = Phi3Config(vocab_size=16, hidden_size=8, intermediate_size=16,
    ...                  num_hidden_layers=1, num_attention_heads=2)
    >>> ids = jnp.arange(4)[None]
    >>> p = Llama(cfg).init(jax.random.key(0), ids)['params']
    >>> sp, scfg = split_projections(p, cfg)
    >>> sorted(sp['layers_0']['attn']), scfg.fused_projections
    (['k_proj', 'o_proj', 'q_proj', 'v_proj'], False)
    >>> y_split = Llama(scfg).apply({'params': sp}, ids)
    >>> bool(jnp.allclose(y_split, Llama(cfg).apply({'params': p}, ids)))
    True
    >>> fp, fcfg = fuse_projections(sp, scfg)
    >>> fcfg == cfg and jax.tree.all(jax.tree.map(jnp.array_equal, fp, p))
    True
  """
  if not config.fused_projections:
    raise ValueError("split_projections: the config's projections are not fused")
  attn, mlp = _sizes(config)
  flat = dict(jtree.flatten(params))
  for i in range(config.num_hidden_layers):
    f = f"layers_{i}"
    for fused, names, sizes in ((f"{f}/attn/qkv_proj", ("q_proj", "k_proj", "v_proj"), attn),
                                (f"{f}/mlp/gate_up_proj", ("gate_proj", "up_proj"), mlp)):
      parent = fused.rsplit("/", 1)[0]
      for leaf in ("kernel", "bias"):
        if f"{fused}/{leaf}" not in flat:
          continue
        w = flat.pop(f"{fused}/{leaf}")
        parts = jnp.split(w, list(_cumsum(sizes)), axis=-1)
        for name, part in zip(names, parts):
          flat[f"{parent}/{name}/{leaf}"] = part
  return jtree.unflatten(flat), dataclasses.replace(config, fused_projections=False)


def fuse_projections(params: Any, config: LlamaConfig) -> tuple[dict, LlamaConfig]:
  """The inverse of :func:`split_projections` (concatenates along the output axis)."""
  if config.fused_projections:
    raise ValueError("fuse_projections: the config's projections are already fused")
  flat = dict(jtree.flatten(params))
  for i in range(config.num_hidden_layers):
    f = f"layers_{i}"
    for fused, names in ((f"{f}/attn/qkv_proj", ("q_proj", "k_proj", "v_proj")),
                         (f"{f}/mlp/gate_up_proj", ("gate_proj", "up_proj"))):
      parent = fused.rsplit("/", 1)[0]
      for leaf in ("kernel", "bias"):
        keys = [f"{parent}/{n}/{leaf}" for n in names]
        if all(k in flat for k in keys):
          flat[f"{fused}/{leaf}"] = jnp.concatenate([flat.pop(k) for k in keys], axis=-1)
  return jtree.unflatten(flat), dataclasses.replace(config, fused_projections=True)


def _cumsum(sizes: list[int]) -> list[int]:
  out, total = [], 0
  for s in sizes[:-1]:
    total += s
    out.append(total)
  return out
