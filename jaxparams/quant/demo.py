"""Deprecated: the quantization demo moved to :mod:`jaxparams.demo.quant_minilm`.

Example:
  >>> import jaxparams.demo.quant_minilm
"""

import warnings

from jaxparams.demo.quant_minilm import *  # noqa: F401,F403
from jaxparams.demo.quant_minilm import __all__  # noqa: F401

warnings.warn("jaxparams.quant.demo moved to jaxparams.demo.quant_minilm", DeprecationWarning,
              stacklevel=2)
