"""Pallas kernels of jaxparams (installed as ``jaxparams.kernels``).

One subpackage per op, each with a pure-``jnp`` ``reference.py`` (the
specification) beside its Pallas kernels and an ``api.py`` entry point, e.g.
``jaxparams.kernels.dequant_matmul``. Kernels that differ per chip are two files
(``dequant_matmul/pallas_tpu.py``, ``pallas_gpu.py``); kernels that are the same
code with a different tiling are one (``merge_sparsify/pallas.py``, ``target=``).
Every ``api.py`` takes ``implementation=None|'xla'|'pallas'|'pallas_tpu'|'pallas_gpu'``
with the one fallback rule of :mod:`jaxparams.kernels.dispatch`, and every op is
tested by the shared base ``tests/kernels/kernel_contract.py`` (reference vs
kernel in interpret mode, gradients, ``jax.export`` lowering for tpu and cuda).
Subpackages are imported on demand, not from here, so importing one kernel never
pulls in the others. Kernels never import the library areas (merge, quant, ...).
"""
