"""Quantization: packed ``QArray`` pytrees and weight quantizers (RTN, NF4, FP8, HQQ, GPTQ, AWQ, decoupleQ).

Example:
  >>> import jax, jaxparams as jp
  >>> w = jax.random.normal(jax.random.key(0), (64, 8))
  >>> qa = jp.quant.rtn(w, jp.quant.RTNConfig(bits=4, group_size=32))
  >>> qa.dequantize().shape
  (64, 8)
"""

from jaxparams.quant.packing import codes_per_word, pack, packed_rows, unpack
from jaxparams.quant.qarray import KINDS, NF4_CODEBOOK, QArray, dequantize, is_qarray
from jaxparams.quant.rtn import RTNConfig, rtn

__all__ = [
    "KINDS", "NF4_CODEBOOK", "QArray", "RTNConfig", "codes_per_word", "dequantize", "is_qarray",
    "pack", "packed_rows", "rtn", "unpack",
]
