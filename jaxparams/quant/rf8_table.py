"""The RF8 code table: what each 8-bit code of a ``kind='rf8'`` QArray means (the storage format).

One byte per weight: ``sign (1 bit) | magnitude index m (7 bits)``; ``TABLE[m]`` is the magnitude
in units of the group's scale ``2^b_low`` (``m = 0`` zero, ``m = 1 + 7 i + j`` the value
``2^i * SIGNIFICANDS[j]``, ``m = 127`` NaN). The decoder (:func:`dequantize_codes`) is read by
:class:`~jaxparams.quant.QArray`; the encoder (rounding to two powers of two) is
:mod:`jaxparams.quant.rf8`, which builds on this table (see its docstring for the format's
derivation).

Example:
  >>> float(TABLE[0]), float(TABLE[1]), float(TABLE[8]), len(TABLE)
  (0.0, 1.0, 2.0, 128)
  >>> import jax.numpy as jnp
  >>> dequantize_codes(jnp.array([1, 0x81], jnp.uint8), jnp.array([0.5, 0.5])).tolist()
  [0.5, -0.5]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BINADES", "SIGNIFICANDS", "TABLE", "dequantize_codes"]

SIGNIFICANDS = np.array([1.0, 1.0625, 1.125, 1.25, 1.5, 1.75, 1.875], np.float32)
BINADES = 18
# Magnitude of each 7-bit index in units of 2^b_low: 0, then 2^i * s for i = 0..17; 127 is NaN.
TABLE = np.concatenate([[0.0], (2.0 ** np.arange(BINADES)[:, None] * SIGNIFICANDS).ravel(),
                        [np.nan]]).astype(np.float32)


def dequantize_codes(codes: jax.Array, scale_full: jax.Array) -> jax.Array:
  """``TABLE[codes]`` with signs, times the (already expanded) scale: the QArray dequantizer."""
  c = codes.astype(jnp.int32)
  mag = jnp.asarray(TABLE)[c & 0x7F] * scale_full
  return jnp.where(c >> 7, -mag, mag)
