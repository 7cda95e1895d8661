"""Reference Flax (linen) models with Hugging Face weight adapters.

* :class:`Llama` / :class:`LlamaConfig`: Llama-family decoder (RMSNorm, RoPE, GQA, SwiGLU).
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
from jaxparams.models.hf import from_hf, hf_name_map, model_for_config, to_hf
from jaxparams.models.minilm import embed, load_minilm, minilm_path
from jaxparams.models.mlp import MLP
from jaxparams.models import digits_cnn  # DigitsCNN with batch-statistics norms (EATA)

__all__ = [
    "Llama", "LlamaConfig", "Bert", "BertConfig", "MLP", "Linear", "Embed", "RMSNorm",
    "LayerNorm", "mean_pool", "l2_normalize", "sentence_embeddings", "from_hf", "to_hf",
    "hf_name_map", "model_for_config", "load_minilm", "minilm_path", "embed",
]
