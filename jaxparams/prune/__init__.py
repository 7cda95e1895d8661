"""Pruning and sparsity: one-shot (magnitude, random, N:M, Wanda, SparseGPT) and during training
(SNIP, gradual magnitude pruning with a polynomial schedule, uniform/ERK distributions, an optax
wrapper that keeps the masks in its state); generalized-Gaussian priors (fits, GG initialisation,
DeepShape, BackSlash, RF8 codes) and MACPruning (random input-pixel deactivation).

Every one-shot method is a transform record in :data:`PRUNERS`, run by the tree driver
(:func:`prune_tree`) and the streaming driver (:func:`prune_checkpoint`).

Example:
  >>> import jax
  >>> import jaxparams as jp
  >>> w = {'dense': {'kernel': jax.random.normal(jax.random.key(0), (8, 8))}}
  >>> _, report = jp.prune.prune_tree(w, 'magnitude', sparsity=0.75)
  >>> report
  {'dense/kernel': 0.75}
"""

from jaxparams.prune.api import default_prune_where, prune_checkpoint, prune_tree, sparsity_of
from jaxparams.prune.calibrated import prune_hf_model, prune_model
from jaxparams.prune.distribution import erk, uniform
from jaxparams.prune.gg import fit_gg, gg_init, gg_ratio, gg_reinit, gg_sample, gg_summary
from jaxparams.prune.macpruning import importance_map, masked_apply, pixel_mask
from jaxparams.prune.masks import (global_masks, magnitude_mask, nm_mask, random_mask, row_mask,
                                   topk_mask)
from jaxparams.prune.obs_pruning import sparsegpt
from jaxparams.prune.optax_pruning import (PruningState, apply_masks, post_update, sparsity_report,
                                         wrap_optax)
from jaxparams.prune.records import (PRUNERS, MagnitudeConfig, RandomConfig, SparseGPTConfig,
                                     WandaConfig)
from jaxparams.prune.rf8 import rf8_decode, rf8_encode, rf8_round
from jaxparams.prune.schedule import OneShotSchedule, PolynomialSchedule
from jaxparams.prune.shaping import backslash, code_entropy, deepshape, deepshape_penalty
from jaxparams.prune.snip import snip_masks, snip_scores
from jaxparams.prune.sparse24 import compress_24, decompress_24
from jaxparams.prune.wanda import wanda_mask, wanda_scores

__all__ = [
    "MagnitudeConfig", "OneShotSchedule", "PRUNERS", "PolynomialSchedule", "PruningState",
    "RandomConfig", "SparseGPTConfig", "WandaConfig", "apply_masks", "backslash", "code_entropy",
    "compress_24", "decompress_24",
    "deepshape", "deepshape_penalty", "default_prune_where", "erk", "fit_gg", "gg_init", "gg_ratio", "gg_reinit", "gg_sample",
    "gg_summary", "global_masks", "importance_map", "magnitude_mask", "masked_apply", "nm_mask",
    "pixel_mask", "post_update", "prune_checkpoint", "prune_hf_model", "prune_model", "prune_tree", "random_mask", "rf8_decode", "rf8_encode",
    "rf8_round", "row_mask", "snip_masks", "snip_scores", "sparsegpt", "sparsity_of",
    "sparsity_report", "topk_mask", "uniform", "wanda_mask", "wanda_scores", "wrap_optax",
]
