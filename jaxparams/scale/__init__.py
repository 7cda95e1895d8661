"""Scaling and growth: function-preserving growth transforms and scaling rules.

Growth (each ``params, config -> params, config``, the function unchanged):

- `tokenformer`: `grow` a TokenFormer (append zero-key parameter tokens, τ frozen); the model
  (`Pattention`, `TokenFormer`) is `jaxparams.models.tokenformer`, re-exported here.
- `net2net`: Net2WiderNet / Net2DeeperNet for Dense stacks; `llama_growth` the same for
  `jaxparams.models.Llama` (`widen_llama_ffn`, `widen_llama_heads`, `widen_llama_hidden`,
  `deepen_llama`);
  `unit_mapping` the unit mappings both use.
- `upcycle`: dense FFN -> mixture of experts (`upcycle_llama`, `experts_from_models`,
  `extract_expert`); the model (`MoELlama`, `moe_ffn`) is `jaxparams.models.moe_llama`,
  re-exported here.
- `vocab_trim`: keep the tokens a corpus uses (`trim_vocab`, `write_tokenizer`).

Rules: `mup` (μP init/LR multipliers as optax transforms, coordinate check), `steplaw`
(η and B from N and D), `compound` (fast dWr scaling).

Example:
  >>> from jaxparams import scale
  >>> scale.wider_mapping(2, 3)[0].tolist()
  [0, 1, 0]
  >>> round(scale.step_law(1e9, 1e11).learning_rate, 5)
  0.00163
"""

from jaxparams.scale import (compound, llama_growth, mup, net2net, steplaw, tokenformer,
                             unit_mapping, upcycle, vocab_trim)
from jaxparams.scale.compound import compound_scale, fast_exponents, scale_llama
from jaxparams.scale.mup import coord_check, mup_adam, mup_adamw, mup_sgd
from jaxparams.scale.net2net import (deepen_llama, mlp_features, net2deeper_mlp, net2wider_mlp,
                                     widen_llama_ffn, widen_llama_heads, widen_llama_hidden,
                                     wider_mapping)
from jaxparams.scale.steplaw import apply_step_law, non_embedding_params, step_law
from jaxparams.scale.tokenformer import (Pattention, TokenFormer, TokenFormerConfig, grow,
                                         grow_optimizer_state)
from jaxparams.scale.upcycle import (MoEFFN, MoELlama, MoELlamaConfig, experts_from_models,
                                     extract_expert, extract_llama, moe_ffn, upcycle_ffn,
                                     upcycle_llama)
from jaxparams.scale.vocab_trim import VocabTrimConfig, trim_vocab, write_tokenizer

__all__ = [
    "MoEFFN", "MoELlama", "MoELlamaConfig", "Pattention", "TokenFormer", "TokenFormerConfig",
    "VocabTrimConfig", "apply_step_law", "compound", "compound_scale", "coord_check",
    "deepen_llama", "experts_from_models", "extract_expert", "extract_llama", "fast_exponents",
    "grow", "grow_optimizer_state", "mlp_features", "moe_ffn", "mup", "mup_adam", "mup_adamw", "mup_sgd", "net2deeper_mlp",
    "net2net", "net2wider_mlp", "non_embedding_params", "scale_llama", "step_law", "steplaw",
    "tokenformer", "trim_vocab", "upcycle", "upcycle_ffn", "upcycle_llama", "vocab_trim",
    "widen_llama_ffn", "widen_llama_heads", "widen_llama_hidden", "wider_mapping",
    "write_tokenizer",
]
