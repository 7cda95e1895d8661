"""Architecture adapters of locate-then-edit (ROME, MEMIT, AlphaEdit): Llama and BERT.

An :class:`Arch` says which kernel is the edited "value matrix", where its keys come from and how
a request becomes token rows:

* ``llama`` (causal LM): ``layers_{l}/mlp/down_proj/kernel``; rows ``<s> prompt target``, the
  target scored as next tokens; the block site is the block output (residual stream).
* ``bert`` (masked LM, :class:`jaxparams.models.Bert` with ``mlm_head``):
  ``layers_{l}/mlp/output/kernel``, the FFN output dense (HF ``encoder.layer.{l}.output.dense``),
  whose keys are the GELU activations of ``intermediate``; rows
  ``[CLS] prompt [MASK]... [SEP]`` with one ``[MASK]`` per target token, the target scored at
  the masks (the cloze form of Knowledge Neurons, Dai et al. 2022; EasyEdit does not edit BERT,
  zjunlp/EasyEdit#59). BERT is post-LN, so the block site (MEMIT's ``z``) is the pre-LayerNorm
  sum ``h + FFN(h)`` of the layer: a change of the FFN output adds to it exactly, as an MLP
  output adds to a Llama's residual stream. The KL term of the target optimisation reads the
  ``[MASK]`` of ``"{} is a [MASK]"`` (the subject position of a masked LM predicts the subject
  itself). ``<s>`` in a template stands for ``[SEP]``.

Everything else (statistics, closed-form updates, deltas, ``where=`` selection) is shared.

This module gathers the architecture-specific names for readers; they live where they belong
in the layering: the site table in :mod:`jaxparams.edit.sites` (the bottom of the area), the
BERT probe in :mod:`jaxparams.edit.probe`, the masked-LM rows in :mod:`jaxparams.edit.mlm`,
``encode_batch_mlm`` in :mod:`jaxparams.edit.targets` and ``text_batches_mlm`` in
:mod:`jaxparams.edit.stats`. Nothing in :mod:`jaxparams.edit` imports this module.

Example:
  >>> kernel_path(3, BERT), layer_of_path('layers_3/mlp/output/kernel')
  ('layers_3/mlp/output/kernel', 3)
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models import Bert, BertConfig
  >>> cfg = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
  ...                  intermediate_size=16, mlm_head=True, add_pooling_layer=False)
  >>> m = Bert(cfg); p = m.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']
  >>> of(m).name, of(p).name
  ('bert', 'bert')
  >>> out = run_bert(m, p, jnp.ones((1, 4), jnp.int32), None, keys=(1,), hidden=(0,))
  >>> out.logits.shape, out.keys[1].shape, out.hidden[0].shape
  ((1, 4, 16), (1, 4, 16), (1, 4, 8))
"""

from jaxparams.edit.mlm import (context_templates_mlm, encode_request_mlm, encode_text_mlm,
                                mlm_target_logprobs)
from jaxparams.edit.probe import run_bert
from jaxparams.edit.sites import (ARCHS, BERT, CLS, LLAMA, MASK, PAD, SEP, UNK, Arch, bias_path,
                                  kernel_path, layer_of_path, of)
from jaxparams.edit.stats import text_batches_mlm
from jaxparams.edit.targets import encode_batch_mlm

__all__ = ["Arch", "LLAMA", "BERT", "ARCHS", "of", "kernel_path", "bias_path", "layer_of_path",
           "run_bert", "encode_request_mlm", "encode_batch_mlm", "context_templates_mlm",
           "mlm_target_logprobs", "text_batches_mlm", "encode_text_mlm", "MASK", "CLS", "SEP",
           "UNK", "PAD"]
