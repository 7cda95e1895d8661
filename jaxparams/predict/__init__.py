"""Parameter prediction: graph hypernetworks (LoGAH low-rank decoder, GHN-3 tiled baseline).

* :func:`build` / :class:`Graph` (:mod:`.graph`): architecture graphs traced from any model's
  forward pass (parameterised ops and merges as nodes, data flow as edges).
* :mod:`.encoder`: the Graphormer node encoder; :mod:`.decoders`: low-rank and tiled decoders.
* :class:`HypernetConfig` / :class:`Hypernet` / :func:`init` / :func:`params` (:mod:`.hypernet`):
  ``params(hypernet, config)`` predicts a full parameter tree for any width and depth.
* :func:`fit` / :class:`FitConfig` (:mod:`.fit`): training on an architecture dataset with optax.
* :func:`save` / :func:`load` (:mod:`.checkpoint`): safetensors + ``config.json``.
* :func:`sample_configs` / :func:`byte_tokens` (:mod:`.dataset`): GPTS-1K-style architectures and
  the byte-level corpus.

Example:
  >>> import jax, jaxparams as jp
  >>> hn = jp.predict.init(jax.random.key(0), jp.predict.HypernetConfig(hid=16, layers=1,
  ...                                                                   heads=2, rank=4))
  >>> cfg = jp.predict.make_config('gpt2', depth=1, width=16, heads=2, ffn=64)
  >>> tree = jp.predict.params(hn, cfg)
  >>> tree['layers_0']['attn']['q_proj']['bias'].shape
  (16,)
"""

from jaxparams.predict import decoders, encoder
from jaxparams.predict.checkpoint import load, save
from jaxparams.predict.dataset import (STYLES, byte_tokens, make_config, sample_configs,
                                       seen_sizes, widest)
from jaxparams.predict.fit import FitConfig, fit, lm_loss, optimizer, token_batch
from jaxparams.predict.graph import OP_TYPES, Graph, build
from jaxparams.predict.hypernet import (DECODERS, Hypernet, HypernetConfig, decoder_params, init,
                                        params, params_from_graph)

__all__ = ["DECODERS", "FitConfig", "Graph", "Hypernet", "HypernetConfig", "OP_TYPES", "STYLES",
           "build", "byte_tokens", "decoder_params", "decoders", "encoder", "fit", "init",
           "lm_loss", "load", "make_config", "optimizer", "params", "params_from_graph",
           "sample_configs", "save", "seen_sizes", "token_batch", "widest"]
