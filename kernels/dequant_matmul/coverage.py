"""Which real-model layer shapes each dequant-matmul kernel takes, and why the others do not.

``MODEL_LAYERS`` lists the distinct ``(K, N)`` of the linear layers of a few model families (the
weight is ``W[K, N]``, ``y = x @ W``); :func:`grid` crosses them with the usual bit widths and
group sizes; :func:`status` says what :func:`~jaxparams.kernels.dequant_matmul.dequant_matmul`
runs for one of them on a target: ``'pallas'``, ``'xla'`` (the kernel's planner refuses the
shape, the dispatcher falls back, with the reason) or ``'invalid'`` (the packed layout itself
cannot express it, so every implementation raises).

Example:
  >>> status(384, 1536, bits=4, group_size=128, target="gpu")      # MiniLM FFN up
  ('pallas', '')
  >>> status(896, 896, bits=4, group_size=256, target="gpu")[0]     # 256 does not divide 896
  'invalid'
  >>> status(4096, 4096, bits=4, group_size=128, target="gpu", dtype="float32")[0]
  'xla'
"""

from __future__ import annotations

import itertools
from typing import Iterator

import jax.numpy as jnp

__all__ = ["MODEL_LAYERS", "BITS", "GROUPS", "grid", "status"]

MODEL_LAYERS: dict[str, tuple[tuple[int, int], ...]] = {
    # all-MiniLM-L6-v2: hidden 384, FFN 1536 (q/k/v/o, up, down)
    "minilm": ((384, 384), (384, 1536), (1536, 384)),
    # BERT-base: hidden 768, FFN 3072, and the 30522-word MLM head (N % 64 != 0, N % 4 != 0)
    "bert-base": ((768, 768), (768, 3072), (3072, 768), (768, 30522)),
    # BERT-large: hidden 1024, FFN 4096
    "bert-large": ((1024, 1024), (1024, 4096), (4096, 1024)),
    # Qwen2-0.5B: hidden 896, 2 KV heads of 64, FFN 4864
    "qwen2-0.5b": ((896, 896), (896, 128), (896, 4864), (4864, 896)),
    # Llama-2-7B: hidden 4096, FFN 11008
    "llama-2-7b": ((4096, 4096), (4096, 11008), (11008, 4096)),
    # Llama-3-8B / Mistral-7B: 8 KV heads of 128, FFN 14336
    "llama-3-8b": ((4096, 1024), (4096, 14336), (14336, 4096)),
}
BITS = (4, 8)
GROUPS = (32, 64, 128, 256, None)  # None: per-channel (G = K)


def grid() -> Iterator[tuple[str, int, int, int, int]]:
  """``(model, K, N, bits, group_size)`` for every distinct layer shape x bits x group."""
  seen = set()
  for model, shapes in MODEL_LAYERS.items():
    for (k, n), bits, group in itertools.product(shapes, BITS, GROUPS):
      g = k if group is None else group
      if (k, n, bits, g) not in seen:
        seen.add((k, n, bits, g))
        yield model, k, n, bits, g


def status(k: int, n: int, *, bits: int, group_size: int, target: str, m: int = 1,
           dtype="bfloat16") -> tuple[str, str]:
  """``(kind, reason)``: what ``dequant_matmul(implementation=None)`` runs on ``target``.

  Args:
    k, n: the weight's shape ``[K, N]``.
    bits, group_size: the quantization.
    target: ``'gpu'`` (Mosaic GPU) or ``'tpu'`` (Mosaic TPU).
    m: tokens (rows of ``x``).
    dtype: the activations' dtype.

  Returns:
    ``('pallas', '')``, ``('xla', why the kernel refuses)`` or ``('invalid', why the layout
    cannot express it)``.
  """
  if target not in ("gpu", "tpu"):
    raise ValueError(f"unknown target {target!r}; valid: ['gpu', 'tpu']")
  if group_size <= 0 or k % group_size:
    return "invalid", (f"group_size={group_size} does not divide K={k}: the layout has "
                       f"K // G scale rows")
  try:
    if target == "gpu":
      from jaxparams.kernels.dequant_matmul import pallas_gpu
      pallas_gpu.plan_tiles(m, k, n, bits=bits, group_size=group_size, dtype=jnp.dtype(dtype))
    else:
      from jaxparams.kernels.dequant_matmul import pallas_tpu
      pallas_tpu.plan_blocks(m, k, n, bits=bits, group_size=group_size, dtype=jnp.dtype(dtype))
  except ValueError as e:
    return "xla", str(e)
  return "pallas", ""
