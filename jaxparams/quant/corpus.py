"""Deprecated: the calibration corpus moved to :mod:`jaxparams.calib.corpus`.

Example:
  >>> import jaxparams.calib.corpus
"""

import warnings

from jaxparams.calib.corpus import (docstring_sentences, reference_sentences,  # noqa: F401
                                    sklearn_sentences, split_sentences, text_batches)

__all__ = ["docstring_sentences", "reference_sentences", "sklearn_sentences", "split_sentences"]

warnings.warn("jaxparams.quant.corpus moved to jaxparams.calib.corpus", DeprecationWarning,
              stacklevel=2)
