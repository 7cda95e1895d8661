"""RF8 rounding and codes for the priors toolkit: the definitions live in
:mod:`jaxparams.quant.rf8` (also the ``'rf8'`` quantizer and QArray kind); re-exported here.

Example:
  >>> import jax.numpy as jnp
  >>> rf8_round(jnp.array([0.3, 0.7, 0.9, -0.1234, 1.0, 0.0])).tolist()
  [0.3125, 0.75, 0.875, -0.125, 1.0, 0.0]
"""

from jaxparams.quant.rf8 import SIGNIFICANDS, rf8_decode, rf8_encode, rf8_round

__all__ = ["SIGNIFICANDS", "rf8_decode", "rf8_encode", "rf8_round"]
