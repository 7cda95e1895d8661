"""Reference Flax (linen) models with Hugging Face weight adapters.

* :class:`Llama` / :class:`LlamaConfig`: Llama-family decoder (RMSNorm, RoPE, GQA, SwiGLU);
  the same module runs :class:`MistralConfig`, :class:`Qwen2Config`, :class:`Qwen3Config` and
  :class:`Phi3Config` (config switches: q/k/v bias, q/k norm, sliding window, fused projections).
* :class:`Gemma` / :class:`Gemma2Config` / :class:`Gemma3Config`: Gemma 2 and Gemma 3 (text).
* :func:`families` / :func:`family`: the registry of families ``from_hf``/``to_hf`` know.
* :class:`Bert` / :class:`BertConfig`: BERT encoder (all-MiniLM-L6-v2 architecture) and
  :func:`sentence_embeddings` (mean pooling + L2 normalisation).
* :class:`MLP`: small perceptron for demos.
* :func:`from_hf` / :func:`to_hf` / :func:`hf_name_map`: HF safetensors <-> Flax params.
* :func:`load_minilm` / :func:`minilm_path` / :func:`embed`: the packaged all-MiniLM-L6-v2.

Every dense layer is a :class:`Linear` with a 2-D ``[in, out]`` kernel and a ``dot`` injection
point, so quantized (``QArray``) kernels run unchanged: ``Llama(cfg, dot=jaxparams.quant.dot)``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxparams as jp
  >>> cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...     num_hidden_layers=1, num_attention_heads=2)
  >>> params = jp.models.Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 3), int))['params']
  >>> 'layers_0/mlp/gate_proj/kernel' in jp.tree.flatten(params)
  True
"""

from jaxparams.models.bert import Bert, BertConfig, l2_normalize, mean_pool, sentence_embeddings
from jaxparams.models.layers import Embed, LayerNorm, Linear, RMSNorm
from jaxparams.models.llama import Llama, LlamaConfig
from jaxparams.models.gemma import Gemma, Gemma2Config, Gemma3Config
from jaxparams.models.mistral import MistralConfig
from jaxparams.models.phi3 import Phi3Config
from jaxparams.models.qwen import Qwen2Config, Qwen3Config
from jaxparams.models.families import Family, families, family, model_types
from jaxparams.models.tokenizer import load_tokenizer
from jaxparams.models.hf import from_hf, hf_name_map, model_for_config, to_hf
from jaxparams.models.minilm import embed, load_minilm, minilm_path
from jaxparams.models.mlp import MLP
from jaxparams.models.moe_llama import MoEFFN, MoELlama, MoELlamaConfig
from jaxparams.models.tokenformer import Pattention, TokenFormer, TokenFormerConfig
from jaxparams.models import digits_cnn  # DigitsCNN with batch-statistics norms (EATA)

__all__ = [
    "Llama", "LlamaConfig", "Bert", "BertConfig", "MLP", "Linear", "Embed", "RMSNorm",
    "LayerNorm", "mean_pool", "l2_normalize", "sentence_embeddings", "from_hf", "to_hf",
    "hf_name_map", "model_for_config", "load_minilm", "minilm_path", "embed",
    "Gemma", "Gemma2Config", "Gemma3Config", "MistralConfig", "Phi3Config", "Qwen2Config",
    "Qwen3Config", "Family", "families", "family", "model_types", "load_tokenizer",
]
__all__ += ["MoEFFN", "MoELlama", "MoELlamaConfig", "Pattention", "TokenFormer", "TokenFormerConfig"]
