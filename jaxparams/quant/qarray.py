"""``QArray``: a packed quantized weight matrix, registered as a pytree.

Weights use the flax layout ``W[K, N]`` (K inputs, N outputs, ``y = x @ W``);
groups of ``group_size`` rows run along K (group ``g`` covers rows
``[g*G, (g+1)*G)``; per-channel is ``G = K``).

Data fields (pytree children, so they jit, shard and ``tree.map``):
  * ``codes``: uint32 words packed along K (see :mod:`jaxparams.quant.packing`),
    shape ``(ceil(K / P), N)``; for ``kind='nf4'`` the 4-bit indices into the
    NF4 code book packed the same way; for ``kind='fp8_e4m3' / 'fp8_e5m2'`` the
    unpacked fp8 array ``[K, N]``; for ``kind='rf8'`` the uint8 RF8 codes ``[K, N]``
    (:mod:`jaxparams.quant.rf8`, with power-of-two scales).
  * ``scale``: float32 ``[K // G, N]``.
  * ``zero``: float32 ``[K // G, N]`` in code units, or ``None`` (nf4, fp8):
    ``W ~= (q - zero) * scale``. Symmetric int codes store ``zero = 2**(bits-1)``.
  * ``g_idx``: optional int32 ``[K]``: the group of each input row, used only by
    GPTQ with act-order without static groups (the HF GPTQ ``g_idx``). ``None``
    means ``g_idx[k] = k // G`` (the kernel-friendly layout).

Static fields: ``shape`` (K, N), ``bits``, ``group_size``, ``kind``
(``'int' | 'nf4' | 'fp8_e4m3' | 'fp8_e5m2' | 'rf8'``), ``dtype`` (name of the original
dtype, e.g. ``'bfloat16'``).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.quant.rtn import rtn, RTNConfig
  >>> w = jax.random.normal(jax.random.key(0), (64, 8))
  >>> qa = rtn(w, RTNConfig(bits=4, group_size=32))
  >>> qa.codes.shape, qa.scale.shape
  ((8, 8), (2, 8))
  >>> qa.dequantize().shape
  (64, 8)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.kernels.dequant_matmul import reference as spec
from jaxparams.quant import packing, rf8_table

__all__ = ["QArray", "KINDS", "NF4_CODEBOOK", "is_qarray", "dequantize"]

KINDS = ("int", "nf4", "fp8_e4m3", "fp8_e5m2", "rf8")

# The 16 NF4 levels of QLoRA (Dettmers et al. 2023, Appendix E), ascending, exact 0 at index 7.
NF4_CODEBOOK = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

FP8_DTYPES = {"fp8_e4m3": jnp.float8_e4m3fn, "fp8_e5m2": jnp.float8_e5m2}


@dataclasses.dataclass(frozen=True, kw_only=True)
class QArray:
  """A quantized 2-D weight ``W[K, N]``; see the module docstring for the layout."""

  codes: jax.Array
  scale: jax.Array
  zero: jax.Array | None
  shape: tuple[int, int]
  bits: int
  group_size: int
  kind: str
  dtype: str
  g_idx: jax.Array | None = None

  # ---------------------------------------------------------------- properties
  @property
  def ndim(self) -> int:
    return 2

  @property
  def size(self) -> int:
    return int(self.shape[0]) * int(self.shape[1])

  @property
  def num_groups(self) -> int:
    return self.shape[0] // self.group_size

  @property
  def nbytes(self) -> int:
    """Bytes actually stored: codes + scale + zero (+ g_idx)."""
    total = 0
    for a in (self.codes, self.scale, self.zero, self.g_idx):
      if a is not None:
        total += int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize
    return total

  @property
  def bits_per_weight(self) -> float:
    return 8.0 * self.nbytes / max(self.size, 1)

  # ---------------------------------------------------------------- methods
  def unpacked_codes(self) -> jax.Array:
    """Integer codes ``[K, N]`` (int32) for kind 'int'/'nf4'."""
    if self.kind not in ("int", "nf4"):
      raise ValueError(f"unpacked_codes() needs kind 'int' or 'nf4', this QArray is {self.kind!r}")
    return packing.unpack(self.codes, self.bits, self.shape[0])

  def expand(self, a: jax.Array) -> jax.Array:
    """Broadcasts a per-group array ``[K // G, N]`` to ``[K, N]`` (honours ``g_idx``)."""
    if self.g_idx is not None:
      return jnp.take(a, self.g_idx, axis=0)
    return jnp.repeat(a, self.group_size, axis=0, total_repeat_length=self.shape[0])

  def dequantize(self, dtype=None) -> jax.Array:
    """Returns ``W ~= (q - zero) * scale`` as ``[K, N]`` in ``dtype`` (default: original)."""
    if self.kind not in KINDS:
      raise ValueError(f"unknown QArray kind {self.kind!r}; valid: {list(KINDS)}")
    out_dtype = jnp.dtype(dtype if dtype is not None else self.dtype)
    return _dequantize_jit(self.codes, self.scale, self.zero, self.g_idx, kind=self.kind,
                           bits=self.bits, group_size=self.group_size, k=self.shape[0],
                           dtype=out_dtype)

  def __jax_array__(self):  # lets jnp functions accept a QArray as its dequantized value
    return self.dequantize()

  def __repr__(self) -> str:
    z = "None" if self.zero is None else f"{tuple(self.zero.shape)}"
    gi = "" if self.g_idx is None else ", g_idx"
    return (f"QArray(shape={self.shape}, kind={self.kind!r}, bits={self.bits}, "
            f"group_size={self.group_size}, dtype={self.dtype!r}, codes={tuple(self.codes.shape)}"
            f":{self.codes.dtype}, scale={tuple(self.scale.shape)}, zero={z}{gi})")


@functools.partial(jax.jit, static_argnames=("kind", "bits", "group_size", "k", "dtype"))
def _dequantize_jit(codes, scale, zero, g_idx, *, kind, bits, group_size, k, dtype):
  def expand(a):
    if g_idx is not None:
      return jnp.take(a, g_idx, axis=0)
    return jnp.repeat(a, group_size, axis=0, total_repeat_length=k)

  if kind == "int" and g_idx is None and bits in (2, 4, 8):
    # The kernel reference is the specification of this layout: one dequantizer.
    return spec.dequantize(codes, scale, zero, bits=bits, group_size=group_size, dtype=dtype)
  scale = expand(scale.astype(jnp.float32))
  if kind == "int":
    q = packing.unpack(codes, bits, k).astype(jnp.float32)
    if zero is not None:
      q = q - expand(zero.astype(jnp.float32))
    w = q * scale
  elif kind == "nf4":
    book = jnp.asarray(NF4_CODEBOOK, jnp.float32)
    w = book[packing.unpack(codes, 4, k)] * scale
  elif kind == "rf8":
    w = rf8_table.dequantize_codes(codes, scale)
  else:
    w = codes.astype(jnp.float32) * scale
  return w.astype(dtype)


jax.tree_util.register_dataclass(
    QArray,
    data_fields=["codes", "scale", "zero", "g_idx"],
    meta_fields=["shape", "bits", "group_size", "kind", "dtype"],
)


def is_qarray(x) -> bool:
  """True when ``x`` is a :class:`QArray` (use as ``is_leaf`` in tree maps)."""
  return isinstance(x, QArray)


def dequantize(x, dtype=None):
  """Dequantizes a QArray; returns other arrays unchanged (handy in tree maps)."""
  return x.dequantize(dtype) if isinstance(x, QArray) else x


def make_int_qarray(q: jax.Array, scale: jax.Array, zero: jax.Array | None, *, bits: int,
                    group_size: int, dtype, g_idx: jax.Array | None = None) -> QArray:
  """Packs integer codes ``q[K, N]`` and builds a kind='int' QArray."""
  k, n = q.shape
  return QArray(codes=packing.pack(q, bits), scale=jnp.asarray(scale, jnp.float32),
                zero=None if zero is None else jnp.asarray(zero, jnp.float32),
                shape=(int(k), int(n)), bits=int(bits), group_size=int(group_size), kind="int",
                dtype=jnp.dtype(dtype).name, g_idx=g_idx)
