"""Calibration: layer-input capture, X^T X statistics, the corpus and the OBS solver.

One layer for every calibrated method (GPTQ, AWQ, decoupleQ now; SparseGPT, Wanda,
ROME/MEMIT/AlphaEdit next):

* :mod:`~jaxparams.calib.capture`: what every Dense-like layer of a flax model sees
  (method interception; kernel paths ``layers_0/attn/q_proj/kernel``).
* :mod:`~jaxparams.calib.stats`: :class:`InputStats`, the one statistics type
  (fp32 sums ``X^T X``, ``sum |x|``, row count; ``.hessian = 2 X^T X / n`` for GPTQ,
  ``.abs_mean`` for AWQ); mergeable, shardable, savable.
* :mod:`~jaxparams.calib.corpus`: offline calibration text and its batches.
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

from jaxparams.calib import capture, corpus, obs, stats
from jaxparams.calib.capture import (block_of, capture_inputs, collect_stats, linear_order,
                                     stats_runner)
from jaxparams.calib.corpus import (docstring_sentences, reference_sentences, sklearn_sentences,
                                    text_batches)
from jaxparams.calib.stats import InputStats, accumulate, as_hessian

__all__ = [
    "InputStats", "accumulate", "as_hessian", "block_of", "capture", "capture_inputs",
    "collect_stats", "corpus", "docstring_sentences", "linear_order", "obs",
    "reference_sentences", "sklearn_sentences", "stats", "stats_runner", "text_batches",
]
