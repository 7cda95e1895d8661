"""Dequantize-and-multiply kernels: ``x @ W`` with ``W`` packed 4/8-bit codes + group scales/zeros.

Files: ``reference.py`` (pure ``jnp`` specification), ``pallas_tpu.py`` (Mosaic TPU
``pallas_call``), ``pallas_gpu.py`` (Mosaic GPU ``plgpu.kernel``, Hopper wgmma),
``api.py`` (the dispatcher below). The packed layout is the one of
``jaxparams.quant.QArray`` (HF GPTQ ``qweight``: codes packed LSB-first along K).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.kernels.dequant_matmul import dequant_matmul, dequant_matmul_reference
  >>> codes = jax.random.bits(jax.random.key(0), (16, 128), jnp.uint32)
  >>> scale, zero = jnp.full((1, 128), 0.1), jnp.full((1, 128), 8.0)
  >>> x = jnp.ones((4, 128), jnp.float32)
  >>> y = dequant_matmul(x, codes, scale, zero, bits=4, group_size=128)
  >>> bool(jnp.allclose(y, dequant_matmul_reference(x, codes, scale, zero, bits=4,
  ...                                                group_size=128)))
  True
"""

from jaxparams.kernels.dequant_matmul.api import IMPLEMENTATIONS, check_layout, dequant_matmul
from jaxparams.kernels.dequant_matmul.reference import (dequant_matmul_reference, dequantize,
                                                        unpack)

__all__ = ["IMPLEMENTATIONS", "check_layout", "dequant_matmul", "dequant_matmul_reference",
           "dequantize", "unpack"]
