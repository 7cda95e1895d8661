"""Knowledge editing: ROME, MEMIT, AlphaEdit, GRACE, WISE and FT-L as pure functions on Llama params.

* :mod:`.registry`: the methods as records (name, frozen parameter dataclass with the
  defaults, library function); the CLI, the benchmarks and :mod:`.checkpoint` read them here.
* :mod:`.solve`: closed-form updates on one ``[d_k, d_v]`` kernel (jitted).
* :mod:`.methods`: ``rome``/``memit``/``alphaedit`` -> ``(new_params, Delta)``; layers chosen
  with ``where=`` (MLP output kernels ``layers_{l}/mlp/down_proj/kernel``).
* :mod:`.delta`: export, re-apply (bit-identical) and roll back (bit-exact) an edit.
* :mod:`.stats`: key second moment ``E[k k^T]`` through :mod:`jaxparams.calib` (fp32, streamed,
  shardable), saved per layer under the content fingerprint of the tensors it came from
  (:mod:`.fingerprint`, which deltas also record to refuse a wrong model or a double apply).
* :mod:`.grace`: codebook adaptor through ``dot=``, rollback by edit id; :mod:`.ft`: FT-L.
* :mod:`.wise`: side memory beside one value matrix, activation routing through ``dot=``,
  knowledge shards with random masks merged with the TIES record of :mod:`jaxparams.merge`.
* :mod:`.facts`, :mod:`.facts_lm`: facts/relations/edits files and the facts LM trained here.
* :mod:`.report`: P(new target) and P(old answer) before/after an edit, on the prompt and a
  paraphrase (what ``jaxparams edit`` prints).
* :mod:`.arch`: Llama and BERT masked-LM edit sites (BERT: the FFN output dense
  ``layers_{l}/mlp/output/kernel``, cloze targets at ``[MASK]``); :mod:`.facts_mlm`: a facts
  BERT-MLM trained here.

Example:
  >>> import jaxparams as jp
  >>> from jaxparams import edit
  >>> sorted(edit.METHODS)
  ['alphaedit', 'memit', 'rome']
  >>> edit.registry.names()
  ['alphaedit', 'ft', 'grace', 'memit', 'rome', 'wise']
"""

from jaxparams.edit import registry
from jaxparams.edit.checkpoint import METHODS, apply_delta_checkpoint, edit_checkpoint, edit_params
from jaxparams.edit.delta import Delta, add_delta, apply_delta, load_delta, rollback, save_delta
from jaxparams.edit.facts import FactsSet, load_facts_set
from jaxparams.edit.ft import FTParams, finetune
from jaxparams.edit.grace import GraceParams
from jaxparams.edit.methods import (AlphaEditParams, AlphaEditState, MemitParams, RomeParams,
                                    alpha_state, alphaedit, memit, rome)
from jaxparams.edit.requests import EditRequest, read_requests
from jaxparams.edit.stats import KeyStats, key_stats, load_stats, save_stats
from jaxparams.edit.targets import TargetParams
from jaxparams.edit.wise import WiseKernel, WiseParams, WiseState

__all__ = [
    "METHODS", "registry", "edit_params", "GraceParams", "edit_checkpoint", "apply_delta_checkpoint", "Delta", "add_delta", "apply_delta",
    "rollback", "save_delta", "load_delta", "FactsSet", "load_facts_set", "FTParams", "finetune",
    "RomeParams", "MemitParams", "AlphaEditParams", "AlphaEditState", "rome", "memit",
    "alphaedit", "alpha_state", "EditRequest", "read_requests", "KeyStats", "key_stats",
    "save_stats", "load_stats", "TargetParams", "WiseKernel", "WiseParams", "WiseState",
]
