"""Small HF-style Llama checkpoints for tests, examples and benchmarks.

:func:`write_llama` writes ``config.json`` + safetensors with the tensor
names and shapes of ``LlamaForCausalLM`` (loadable by
``jaxparams.models.from_hf`` and HF transformers); a "fine-tune" is the same
weights plus Gaussian noise (``like=`` + ``noise=``).

Example:
  >>> import tempfile, os
  >>> d = tempfile.mkdtemp()
  >>> base = write_llama(os.path.join(d, 'base'), seed=0)
  >>> ft = write_llama(os.path.join(d, 'ft'), like=base, noise=0.01, seed=1)
  >>> sorted(os.listdir(ft))
  ['config.json', 'model.safetensors']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jaxparams.io import load_safetensors, read_json, save_safetensors

__all__ = ["llama_config", "llama_tensors", "write_llama"]


def llama_config(*, vocab_size: int = 64, hidden_size: int = 16, intermediate_size: int = 32,
                 num_hidden_layers: int = 2, num_attention_heads: int = 4,
                 num_key_value_heads: int = 2, dtype: str = "float32") -> dict[str, Any]:
  """An HF ``config.json`` dict for a ``LlamaForCausalLM``."""
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
      "hidden_size": hidden_size, "intermediate_size": intermediate_size,
      "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
      "num_key_value_heads": num_key_value_heads, "max_position_embeddings": 128,
      "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
      "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
      "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype,
  }


def llama_tensors(cfg: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
  """Random float32 weights with HF names and shapes for ``cfg``."""
  rng = np.random.default_rng(seed)
  h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
  hd = h // cfg["num_attention_heads"]
  kv = cfg["num_key_value_heads"] * hd

  def w(*shape):
    return (rng.standard_normal(shape, dtype=np.float32) * (1.0 / np.sqrt(shape[-1]))
            ).astype(np.float32)

  out = {"model.embed_tokens.weight": w(v, h)}
  for layer in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{layer}"
    out[f"{p}.input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(h).astype(np.float32)
    out[f"{p}.post_attention_layernorm.weight"] = (
        1 + 0.1 * rng.standard_normal(h).astype(np.float32))
    out[f"{p}.self_attn.q_proj.weight"] = w(h, h)
    out[f"{p}.self_attn.k_proj.weight"] = w(kv, h)
    out[f"{p}.self_attn.v_proj.weight"] = w(kv, h)
    out[f"{p}.self_attn.o_proj.weight"] = w(h, h)
    out[f"{p}.mlp.gate_proj.weight"] = w(i, h)
    out[f"{p}.mlp.up_proj.weight"] = w(i, h)
    out[f"{p}.mlp.down_proj.weight"] = w(h, i)
  out["model.norm.weight"] = 1 + 0.1 * rng.standard_normal(h).astype(np.float32)
  out["lm_head.weight"] = w(v, h)
  return out


def write_llama(out_dir: str | Path, *, cfg: dict[str, Any] | None = None, seed: int = 0,
                like: str | Path | None = None, noise: float = 0.0, dtype: str = "float32",
                tensors: dict[str, np.ndarray] | None = None, **save_kwargs: Any) -> Path:
  """Writes a Llama checkpoint folder and returns its path.

  Args:
    out_dir: folder to create.
    cfg: config dict (``llama_config()`` by default; taken from ``like`` if given).
    seed: RNG seed of the weights (or of the noise with ``like``).
    like: an existing checkpoint folder to start from ("fine-tune" of it).
    noise: standard deviation of the Gaussian noise added to every tensor.
    dtype: ``'float32'``, ``'bfloat16'`` or ``'float16'`` on disk.
    tensors: explicit tensors (overrides the random ones).
    **save_kwargs: passed to :func:`jaxparams.io.save_safetensors`.
  """
  if like is not None:
    cfg = cfg or read_json(Path(like) / "config.json", what="model config", folder=like)
    base = {k: np.asarray(v, np.float32) for k, v in load_safetensors(like).items()}
  else:
    cfg = dict(cfg or llama_config())
    base = llama_tensors(cfg, seed)
  if tensors is not None:
    base = dict(tensors)
  if noise:
    rng = np.random.default_rng(seed + 1000)
    base = {k: (v + noise * rng.standard_normal(v.shape, dtype=np.float32)).astype(np.float32)
            for k, v in base.items()}
  np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
  cfg = dict(cfg, torch_dtype=dtype)
  save_safetensors({k: np.asarray(v).astype(np_dtype) for k, v in base.items()}, out_dir,
                   config=cfg, **save_kwargs)
  return Path(out_dir)
