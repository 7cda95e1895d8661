"""Fused sparsify + sign-election + disjoint-mean merge (TIES/DARE/breadcrumbs/DELLA).

``api`` dispatches between the jnp reference (``reference``) and Pallas
kernels (``pallas_tpu`` for TPU Mosaic, ``pallas_gpu`` for GPU); top-k
thresholds come from a counting search over float bit patterns, never a sort.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxparams.kernels import merge_sparsify as ms
  >>> x = jnp.array([0.1, -3.0, 2.0, 0.5])
  >>> (ms.magnitude_bits(x) >= ms.topk_threshold(x, 2)).tolist()
  [False, True, True, False]
"""

from jaxparams.kernels.merge_sparsify.api import (KEY_MAX, key_threshold, resolve_implementation,
                                                  sparsify_merge, topk_cuts, topk_threshold,
                                                  topk_thresholds)
from jaxparams.kernels.merge_sparsify.reference import (della_probabilities, float_keys, hash_uniform,
                                                        in_top, key_to_float, kth_largest_key,
                                                        kth_largest_key_histogram, magnitude_bits,
                                                        sparsify_merge_reference, tie_cut)

__all__ = [
    "KEY_MAX", "della_probabilities", "float_keys", "hash_uniform", "in_top", "key_threshold",
    "key_to_float", "kth_largest_key", "kth_largest_key_histogram", "magnitude_bits",
    "resolve_implementation", "sparsify_merge", "sparsify_merge_reference", "tie_cut",
    "topk_cuts", "topk_threshold", "topk_thresholds",
]
