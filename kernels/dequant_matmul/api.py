"""``dequant_matmul``: the public entry point; picks the Pallas kernel or the XLA reference.

``implementation`` follows :mod:`jaxparams.kernels.dispatch` (one convention and one fallback rule
for every op): ``None`` (the kernel for the backend when the shapes tile, else ``'xla'``),
``'xla'``, ``'pallas'`` (CPU: the TPU kernel interpreted), ``'pallas_tpu'`` / ``'pallas_gpu'``
(force one kernel, e.g. for ``jax.export``). Gradients (w.r.t. ``x``, ``scale``, ``zero``) are
the reference's on every implementation.

Example:
  >>> import jax, jax.numpy as jnp
  >>> codes = jax.random.bits(jax.random.key(0), (16, 128), jnp.uint32)  # K=128 at 4 bits
  >>> scale = jnp.full((1, 128), 0.1); zero = jnp.full((1, 128), 8.0)
  >>> x = jnp.ones((2, 3, 128), jnp.bfloat16)
  >>> dequant_matmul(x, codes, scale, zero, bits=4, group_size=128).shape
  (2, 3, 128)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxparams.kernels.dequant_matmul import reference
from jaxparams.kernels.dispatch import IMPLEMENTATIONS, Implementations

__all__ = ["IMPLEMENTATIONS", "dequant_matmul", "check_layout"]


def check_layout(k: int, codes, scale, zero, *, bits: int, group_size: int) -> int:
  """Validates the packed layout for an input width ``k``; returns N. Raises ``ValueError``."""
  if bits not in (4, 8):
    raise ValueError(f"dequant_matmul supports bits 4 and 8, got bits={bits!r}")
  p = 32 // bits
  if codes.ndim != 2 or scale.ndim != 2:
    raise ValueError(f"codes and scale must be 2-D, got codes {codes.shape}, scale {scale.shape}")
  n = codes.shape[1]
  if group_size <= 0 or k % group_size:
    raise ValueError(f"group_size={group_size} must divide K={k}")
  if codes.shape != (-(-k // p), n):
    raise ValueError(f"codes shape {codes.shape} does not match K={k} at {bits} bits: expected "
                     f"{(-(-k // p), n)}")
  if scale.shape != (k // group_size, n):
    raise ValueError(f"scale shape {scale.shape}, expected {(k // group_size, n)} "
                     f"(K={k}, group_size={group_size})")
  if zero is not None and zero.shape != scale.shape:
    raise ValueError(f"zero shape {zero.shape} must equal scale shape {scale.shape}")
  return n


def _pallas_tpu(x2, codes, scale, zero, *, bits, group_size, interpret):
  from jaxparams.kernels.dequant_matmul import pallas_tpu  # pylint: disable=import-outside-toplevel
  return pallas_tpu.dequant_matmul_tpu(x2, codes, scale, zero, bits=bits, group_size=group_size,
                                       interpret=False if interpret is None else interpret)


def _pallas_gpu(x2, codes, scale, zero, *, bits, group_size, interpret):
  from jaxparams.kernels.dequant_matmul import pallas_gpu  # pylint: disable=import-outside-toplevel
  return pallas_gpu.dequant_matmul_gpu(x2, codes, scale, zero, bits=bits, group_size=group_size,
                                       interpret=interpret)


def _plan_tpu(m, k, n, *, bits, group_size, dtype):
  from jaxparams.kernels.dequant_matmul import pallas_tpu  # pylint: disable=import-outside-toplevel
  pallas_tpu.plan_blocks(m, k, n, bits=bits, group_size=group_size, dtype=dtype)


def _plan_gpu(m, k, n, *, bits, group_size, dtype):
  from jaxparams.kernels.dequant_matmul import pallas_gpu  # pylint: disable=import-outside-toplevel
  pallas_gpu.plan_tiles(m, k, n, bits=bits, group_size=group_size, dtype=dtype)


def _cpu_interpret(target):  # pylint: disable=unused-argument
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=import-outside-toplevel
  return pltpu.InterpretParams()


def _kernels(*, lead, m, k, n, bits, group_size):
  """The op's implementations for one call (the kernels take ``x`` as ``[M, K]``)."""
  def on_2d(kernel):
    def run(x, codes, scale, zero, *, interpret):
      y = kernel(x.reshape(m, k), codes, scale, zero, bits=bits, group_size=group_size,
                 interpret=interpret)
      return y.reshape(*lead, n)
    return run

  return Implementations(
      op="dequant_matmul",
      xla=lambda x, codes, scale, zero: reference.dequant_matmul_reference(
          x, codes, scale, zero, bits=bits, group_size=group_size),
      pallas={"tpu": on_2d(_pallas_tpu), "gpu": on_2d(_pallas_gpu)},
      plan={"tpu": _plan_tpu, "gpu": _plan_gpu},
      interpret=_cpu_interpret)


def dequant_matmul(x: jax.Array, codes: jax.Array, scale: jax.Array, zero: jax.Array | None, *,
                   bits: int, group_size: int, implementation: str | None = None,
                   interpret=None) -> jax.Array:
  """``x @ W`` for a packed integer weight ``W[K, N] = (q - zero) * scale`` (groups along K).

  Args:
    x: ``[..., K]`` bf16 or f32 (f16 works too).
    codes: uint32 words ``[K / P, N]`` (``P = 32 // bits``; HF GPTQ ``qweight`` layout).
    scale: ``[K // group_size, N]`` float; zero: same shape (code units) or None.
    bits: 4 or 8.
    group_size: rows per group along K (K for per-channel).
    implementation: None, 'xla', 'pallas', 'pallas_tpu' or 'pallas_gpu'
      (:mod:`jaxparams.kernels.dispatch`).
    interpret: for the Pallas paths: None (CPU: ``pltpu.InterpretParams()``), True/False, or a
      ``pltpu.InterpretParams`` / GPU interpret params object.

  Returns:
    ``[..., N]`` in ``x.dtype``, accumulated in f32.
  """
  k = x.shape[-1]
  n = check_layout(k, codes, scale, zero, bits=bits, group_size=group_size)
  lead = x.shape[:-1]
  m = 1
  for d in lead:
    m *= int(d)
  impls = _kernels(lead=lead, m=m, k=k, n=n, bits=bits, group_size=group_size)
  run = impls.select(implementation, m, k, n, bits=bits, group_size=group_size, dtype=x.dtype,
                     interpret=interpret)
  return run(x, codes, scale, zero)
