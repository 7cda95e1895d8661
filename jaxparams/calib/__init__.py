"""Calibration: layer-input capture, statistics, the sequential block driver, corpus, OBS solver.

One layer for every calibrated method (GPTQ, AWQ, decoupleQ, AutoRound, OmniQuant, SparseGPT,
Wanda, the data-aware merges, ROME/MEMIT/AlphaEdit's key statistics):

* :mod:`~jaxparams.calib.capture`: what every Dense-like layer of a flax model sees
  (method interception; kernel paths ``layers_0/attn/q_proj/kernel``), and the input/output
  of any module by its path, optionally steered (:func:`capture_calls`, on the one
  interception primitive :func:`intercept`): the only place layer inputs are captured.
* :mod:`~jaxparams.calib.stats`: :class:`InputStats`, the one statistics type
  (fp32 sums ``X^T X``, ``sum |x|``, row count; ``.hessian = 2 X^T X / n`` for GPTQ,
  ``.abs_mean`` for AWQ); mergeable, shardable, savable.
* :mod:`~jaxparams.calib.sequential`: the one sequential block driver (block ``i``
  calibrated on the outputs of transformed block ``i-1``), in memory (:func:`run_groups`)
  and streaming one block at a time (:func:`run_block_chain`).
* :mod:`~jaxparams.calib.fisher`: the diagonal empirical Fisher (squared per-example
  gradients); :func:`~jaxparams.calib.capture.input_abs_max`: per-channel max ``|x|``;
  :func:`accumulate_gram`: a plain key Gram ``X^T X``.
* :mod:`~jaxparams.calib.corpus`: offline calibration text and its batches
  (:func:`~jaxparams.calib.corpus.folder_text_batches`: with a model folder's tokenizer).
* :mod:`~jaxparams.calib.obs`: the OBS core (damped inverse Cholesky with retries,
  blocked lazy updates, the row sweep).

Example:
  >>> import jax, jaxparams.calib as jc
  >>> x = jax.random.normal(jax.random.key(0), (64, 8))
  >>> s = jc.InputStats.from_inputs(x)
  >>> u, tries = jc.obs.inverse_cholesky(s.hessian, jc.obs.damping(s.hessian, 0.01), 4)
  >>> u.shape, int(tries)
  ((8, 8), 0)
"""

from jaxparams.calib import capture, corpus, fisher, obs, sequential, stats
from jaxparams.calib.capture import (block_of, capture_calls, capture_inputs, collect_stats,
                                     intercept, linear_order, module_path, stats_runner)
from jaxparams.calib.corpus import (docstring_sentences, reference_sentences, sklearn_sentences,
                                    text_batches)
from jaxparams.calib.sequential import block_groups, run_block_chain, run_groups
from jaxparams.calib.stats import InputStats, accumulate, accumulate_gram, as_hessian

__all__ = [
    "InputStats", "accumulate", "accumulate_gram", "as_hessian", "block_groups", "block_of",
    "capture", "capture_calls", "capture_inputs", "collect_stats", "corpus",
    "docstring_sentences", "fisher", "intercept", "linear_order", "module_path", "obs",
    "reference_sentences", "run_block_chain", "run_groups", "sequential", "sklearn_sentences",
    "stats", "stats_runner", "text_batches",
]
