"""Compound model scaling (Dollár, Singh, Girshick, "Fast and Accurate Model Scaling", CVPR 2021).

Complexity model: flops f ∝ d·w²·r², params p ∝ d·w², activations
a ∝ d·w·r² (depth d, width w, resolution r). Scaling flops by s with
exponents e_d + e_w + e_r = 1:

  d ← s^{e_d}·d,   w ← s^{e_w/2}·w,   r ← s^{e_r/2}·r

so f scales by s, p by s^{e_d+e_w} and a by s^{e_d+e_w/2+e_r}. *Fast* scaling
uses e_w = α, e_d = e_r = (1−α)/2 (α = 1: width only; α = 1/3: uniform),
default α = 0.8: d × s^0.1, w × s^0.4, r × s^0.05, activations × s^0.6,
params × s^0.9 (pycls ``SCALING_TYPE='d1_w8_g8_r1'``). Widths round to
multiples of 8, resolution to multiples of 4.

For a language model there is no input resolution and per-token flops are
∝ d·w²; `scale_llama` then renormalises the exponents over depth and width
(e_w = α / (α + (1−α)/2), e_d = 1 − e_w), keeps ``head_dim`` and the
FFN/hidden ratio, and rounds the width to a multiple of ``head_dim``.

Example:
  >>> fast_exponents(0.8)
  (0.1, 0.8, 0.1)
  >>> compound_scale(depth=16, width=64, resolution=224, s=4.0)
  ScaledShape(depth=18, width=112, resolution=240)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

__all__ = [
    "ScaledShape", "compound_scale", "complexity_ratios", "fast_exponents", "scale_llama",
]


def fast_exponents(alpha: float = 0.8) -> tuple[float, float, float]:
  """``(e_d, e_w, e_r)`` of fast compound scaling: ``((1−α)/2, α, (1−α)/2)``.

  Raises:
    ValueError: unless 0 ≤ α ≤ 1.
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"compound scaling: alpha must lie in [0, 1], found {alpha}")
  e = round((1.0 - alpha) / 2.0, 12)
  return (e, round(alpha, 12), e)


def complexity_ratios(s: float, exponents: tuple[float, float, float]) -> dict[str, float]:
  """Growth factors of flops, params and activations for flop factor ``s``.

  Example:
    >>> {k: round(v, 4) for k, v in complexity_ratios(4.0, fast_exponents(0.8)).items()}
    {'flops': 4.0, 'params': 3.4822, 'activations': 2.2974}
  """
  e_d, e_w, e_r = exponents
  return {"flops": s ** (e_d + e_w + e_r), "params": s ** (e_d + e_w),
          "activations": s ** (e_d + e_w / 2 + e_r)}


class ScaledShape(NamedTuple):
  depth: int
  width: int
  resolution: int | None


def _round_to(x: float, q: int) -> int:
  return max(q, int(round(x / q)) * q)


def compound_scale(*, depth: int, width: int, resolution: int | None = None, s: float,
                   alpha: float = 0.8, exponents: tuple[float, float, float] | None = None,
                   width_multiple: int = 8, resolution_multiple: int = 4) -> ScaledShape:
  """Scale (depth, width, resolution) so flops grow by ``s``.

  Args:
    depth, width, resolution: the base model (resolution optional).
    s: flop factor (> 0).
    alpha: fast-scaling width exponent (ignored when ``exponents`` is given).
    exponents: explicit ``(e_d, e_w, e_r)`` summing to 1.
    width_multiple, resolution_multiple: rounding quanta.

  Raises:
    ValueError: for s ≤ 0, exponents not summing to 1, or non-positive sizes.
  """
  if not s > 0:
    raise ValueError(f"compound_scale: s must be > 0, found {s}")
  if min(depth, width) <= 0 or (resolution is not None and resolution <= 0):
    raise ValueError(f"compound_scale: sizes must be positive, found depth={depth}, width={width}, "
                     f"resolution={resolution}")
  e_d, e_w, e_r = exponents if exponents is not None else fast_exponents(alpha)
  if abs(e_d + e_w + e_r - 1.0) > 1e-9:
    raise ValueError(f"compound_scale: exponents must sum to 1, found {(e_d, e_w, e_r)}")
  new_d = max(1, int(round(depth * s ** e_d)))
  new_w = _round_to(width * s ** (e_w / 2), width_multiple)
  new_r = None if resolution is None else _round_to(resolution * s ** (e_r / 2), resolution_multiple)
  return ScaledShape(new_d, new_w, new_r)


def scale_llama(config: Any, s: float, *, alpha: float = 0.8) -> Any:
  """A `jaxparams.models.LlamaConfig` with ~``s`` × the per-token flops (d·w² model).

  Depth and width exponents are the fast-scaling ones renormalised without
  resolution; ``head_dim`` is kept (heads = width / head_dim, kv heads keep
  their ratio), the FFN keeps its ratio to the hidden size.

  Example:
    >>> from jaxparams.models.llama import LlamaConfig
    >>> cfg = LlamaConfig(vocab_size=32, hidden_size=256, intermediate_size=688,
    ...                   num_hidden_layers=8, num_attention_heads=4)
    >>> big = scale_llama(cfg, 8.0)
    >>> big.num_hidden_layers, big.hidden_size, big.num_attention_heads, big.intermediate_size
    (10, 640, 10, 1720)
  """
  e_d, e_w, _ = fast_exponents(alpha)
  e_w_lm = e_w / (e_w + e_d)
  hd = config.head_dim_
  group = config.num_attention_heads // config.num_key_value_heads
  shape = compound_scale(depth=config.num_hidden_layers, width=config.hidden_size, s=s,
                         exponents=(1.0 - e_w_lm, e_w_lm, 0.0), width_multiple=hd * group)
  heads = shape.width // hd
  ffn = _round_to(config.intermediate_size * shape.width / config.hidden_size, 8)
  return dataclasses.replace(config, num_hidden_layers=shape.depth, hidden_size=shape.width,
                             num_attention_heads=heads, num_key_value_heads=heads // group,
                             intermediate_size=ffn,
                             head_dim=config.head_dim if config.head_dim else None)
