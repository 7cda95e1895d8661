"""Quantization: packed ``QArray`` pytrees and weight quantizers.

Methods: RTN, NF4, FP8, HQQ, GPTQ, AWQ, decoupleQ.

Every method is a pure function of one weight matrix ``W[K, N]`` (flax layout)
with a frozen config; calibrated ones take the layer's input statistics
:class:`jaxparams.calib.InputStats`. See :mod:`jaxparams.quant.methods` for the registry.

Example:
  >>> import jax, jaxparams as jp
  >>> w = jax.random.normal(jax.random.key(0), (64, 8))
  >>> qa = jp.quant.rtn(w, jp.quant.RTNConfig(bits=4, group_size=32))
  >>> qa.dequantize().shape
  (64, 8)
"""

from jaxparams.quant.awq import AWQConfig, AWQResult, awq
import warnings as _warnings

from jaxparams.calib.stats import InputStats
from jaxparams.quant.calibrate import capture_inputs, collect_stats, quantize_model, text_batches
from jaxparams.quant.checkpoint import (dequantize_flat, detect_layout, export_gptq, import_gptq,
                                        load_quantized, load_quantized_flat, load_quantized_orbax,
                                        save_quantized, save_quantized_orbax)
from jaxparams.quant.decoupleq import DecoupleQConfig, decoupleq
from jaxparams.quant.omniquant import OmniQuantConfig, omniquant
from jaxparams.quant.dot import dot, dot_general, kernel_supported
from jaxparams.quant.fp8 import FP8Config, fp8
from jaxparams.quant.gptq import GPTQConfig, gptq
from jaxparams.quant.hqq import HQQConfig, hqq
from jaxparams.quant.interop import from_qwix, to_qwix, to_qwix_fields
from jaxparams.quant.methods import (Quantizer, get_quantizer, make_config, quantize_matrix,
                                     quantizer_names)
from jaxparams.quant.nf4 import NF4Config, nf4
from jaxparams.quant.packing import codes_per_word, pack, packed_rows, unpack
from jaxparams.quant.qarray import KINDS, NF4_CODEBOOK, QArray, dequantize, is_qarray
from jaxparams.quant.rf8 import RF8Config, rf8
from jaxparams.quant.rtn import RTNConfig, rtn
from jaxparams.quant.rules import (DEFAULT_KEEP, QuantEntry, QuantReport, effective_weight,
                                   layer_error, plan_tree, quantize_leaf, quantize_tree)
from jaxparams.quant.stats import accumulate_stats, gptq_hessian
from jaxparams.quant.stream import dequantize_checkpoint, quantize_checkpoint
from jaxparams.quant.autoround import AutoRoundConfig, autoround, autoround_block
from jaxparams.quant.mixed import allocate_bits, layer_errors, mixed_rules

__all__ = [
    # layout and methods (quant-methods)
    "AWQConfig", "AWQResult", "DecoupleQConfig", "FP8Config", "GPTQConfig",
    "HQQConfig", "KINDS", "NF4Config", "NF4_CODEBOOK", "QArray", "Quantizer", "RTNConfig",
    "accumulate_stats", "awq", "codes_per_word", "decoupleq", "dequantize", "fp8", "from_qwix",
    "get_quantizer", "gptq", "gptq_hessian", "hqq", "is_qarray", "make_config", "nf4", "pack",
    "packed_rows", "quantize_matrix", "quantizer_names", "rtn", "to_qwix", "to_qwix_fields",
    "unpack", "RF8Config", "rf8",
    # inference (quant-kernels)
    "dot", "dot_general", "kernel_supported",
    # trees, calibration, checkpoints (quant-pipeline)
    "DEFAULT_KEEP", "QuantEntry", "QuantReport", "capture_inputs", "collect_stats",
    "dequantize_flat", "export_gptq", "import_gptq", "layer_error", "load_quantized",
    "load_quantized_orbax", "plan_tree", "quantize_leaf", "quantize_model", "quantize_tree",
    "save_quantized", "save_quantized_orbax", "text_batches", "load_quantized_flat",
    "detect_layout", "effective_weight",
    # streaming (checkpoints larger than memory)
    "quantize_checkpoint", "dequantize_checkpoint",
    "OmniQuantConfig", "omniquant",
    # learned rounding and mixed precision (issue 16)
    "AutoRoundConfig", "autoround", "autoround_block", "allocate_bits", "layer_errors",
    "mixed_rules",
]


def __getattr__(name: str):
  if name in ("ActStats", "LayerStats"):
    _warnings.warn(f"jaxparams.quant.{name} is deprecated: use jaxparams.calib.InputStats (one "
                   "statistics type: sums xtx/abs_sum/count; .hessian = 2 X^T X / n, "
                   ".gram = X^T X / n, .abs_mean)", DeprecationWarning, stacklevel=2)
    return InputStats
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
