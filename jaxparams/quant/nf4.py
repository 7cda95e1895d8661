"""NF4 (QLoRA 4-bit NormalFloat) quantization with block-wise absmax.

Each block of ``block_size`` rows along K (per output column) is divided by its
absolute maximum and every value is mapped to the nearest of the 16 NF4 levels
(:data:`jaxparams.quant.qarray.NF4_CODEBOOK`, QLoRA Appendix E). The 4-bit
indices are packed like int4 codes; ``scale`` holds the block absmax
``[K // block_size, N]``; ``zero`` is ``None``. Double quantization of the
scales is not done (scales stay float32).

Example:
  >>> import jax
  >>> w = jax.random.normal(jax.random.key(0), (128, 4))
  >>> qa = nf4(w, NF4Config(block_size=64))
  >>> qa.kind, qa.scale.shape
  ('nf4', (2, 4))
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxparams.quant import common, packing
from jaxparams.quant import record as qrec
from jaxparams.quant.qarray import NF4_CODEBOOK, QArray

__all__ = ["NF4Config", "NF4_RECORD", "nf4"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class NF4Config:
  """NF4 settings.

  Attributes:
    block_size: rows per absmax block along K (QLoRA uses 64); -1/None = per-channel.
  """

  block_size: int | None = 64


def _nf4(w: jax.Array, cfg: NF4Config, *, name: str = "") -> QArray:
  # The math; block size, shape, dtype and finiteness are the record's checks.
  w = common.as_matrix(w, name=name)
  k, n = w.shape
  g = common.resolve_group_size(k, cfg.block_size, name=name)
  idx, amax = _nf4_jit(w, g)
  return QArray(codes=packing.pack(idx, 4), scale=amax, zero=None, shape=(k, n), bits=4,
                group_size=g, kind="nf4", dtype=jnp.dtype(w.dtype).name)


NF4_RECORD = qrec.quantizer("nf4", _nf4, NF4Config, jitted=True, bit_widths=None,
                            group_field="block_size",
                            description="4-bit NormalFloat code book, absmax blocks")


def nf4(w: jax.Array, cfg: NF4Config = NF4Config(), *, name: str = "") -> QArray:
  """Quantizes ``w[K, N]`` to NF4 codes with block absmax scales.

  Raises:
    ValueError: block size not dividing K, or non-finite weights.
  """
  return qrec.call(NF4_RECORD, w, cfg, name=name)


@functools.partial(jax.jit, static_argnums=1)
def _nf4_jit(w, g):
  k, n = w.shape
  w32 = w.astype(jnp.float32).reshape(k // g, g, n)
  amax = jnp.max(jnp.abs(w32), axis=1, keepdims=True)
  amax = jnp.where(amax > 0, amax, 1.0)
  book = jnp.asarray(NF4_CODEBOOK, jnp.float32)
  x = (w32 / amax)[..., None]
  idx = jnp.argmin(jnp.abs(x - book), axis=-1).reshape(k, n)
  return idx.astype(jnp.int32), amax[:, 0, :]
