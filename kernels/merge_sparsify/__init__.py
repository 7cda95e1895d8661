"""Fused sparsify + sign-election + disjoint-mean merge (TIES/DARE/breadcrumbs/DELLA).

``api`` dispatches (``implementation=``, the convention of
:mod:`jaxparams.kernels.dispatch`) between the jnp reference (``reference``)
and the Pallas kernels (``pallas``: one source, ``target='tpu'`` for Mosaic
TPU, ``target='gpu'`` for Mosaic GPU via ``jax.experimental.pallas.mosaic_gpu``).
Top-k thresholds never sort: the exact k-th
largest magnitude key comes from a counting search over float32 bit patterns
(8 kernel passes; on XLA two 65536-bin histogram passes), ties at the
threshold are cut by flat index so exactly k values are kept. DARE/DELLA masks
use a counter-based hash of (seed, flat index): identical on every backend and
tiling, reproducible under the caller's key.

Status of the hardware paths (checked on a CPU-only jax 0.10.2):
* both Pallas builds run in interpret mode on CPU and equal the reference
  (tests/kernels/test_merge_sparsify.py);
* ``jax.export(..., platforms=['tpu'])`` and ``['cuda']`` lower every kernel
  (Mosaic TPU custom calls / Mosaic GPU modules). Export stops at the
  serialized Mosaic module: its compilation for the chip happens on the
  device and has not been run here (no TPU/GPU in this environment);
* Mosaic GPU specifics: tiles are (16, 128) because its async copies move at
  most 256 elements per dimension; SMEM scalar vectors are padded to 128
  bytes; iotas carry an explicit ``WG_STRIDED`` register layout (not in
  interpret mode, where the layout primitive has no CPU rule). jax warns that
  ``pl.pallas_call`` for Mosaic GPU is deprecated in favour of
  ``plgpu.kernel``.

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
