"""HQQ: calibration-free half-quadratic optimisation of the zero point (Badri & Shaji 2023).

Follows the semantics of ``mobiusml/hqq`` (``Quantizer.quantize`` +
``optimize_weights_proximal_legacy``, the library default); independent JAX code:

* per group (``group_size`` rows along K, HQQ ``axis=1``) the inverse scale is
  ``s = min(maxq / (max - min), 2e4)`` and ``z = -min * s``, rounded to an integer
  when ``round_zero`` (default: at 4 bits only, as ``hqq_base_quant_config``);
* iterate ``W_q = clip(round(W s + z))``, ``W_r = (W_q - z) / s``,
  ``W_e = shrink_p(W - W_r, beta)`` (generalised soft-threshold for the l_p norm,
  ``p = 0.7``), ``z = mean(W_q - (W - W_e) s)`` over the group, ``beta *= kappa``;
* early stop (``early_stop=True``): the global error ``mean|W - W_r|`` is checked
  after each update and the loop stops at the first iteration that does not
  improve it (keeping that iteration's zero, exactly as the reference does).
  The loop is a ``lax.while_loop`` with at most ``iters`` iterations.

Only the zero point is optimised (the HQQ default; its scale search is
experimental upstream). The stored QArray uses ``scale = 1 / s`` and a float
``zero`` (code units): ``W ~= (q - zero) * scale``.

Quality note: with a float zero the grid usually has no exact 0 level. On
all-MiniLM-L6-v2 at 2-3 bits this makes HQQ (reference defaults) worse than RTN
in embedding cosine although its weight error (l_0.7, l_1, l_2) and its per-layer
output error are lower: the attention ``value`` kernels have small weights on the
input dims that carry large, token-constant activations, RTN maps them to an
exact 0 and HQQ does not, and attention averaging keeps exactly that coherent
error. ``round_zero=True`` (integer starting zero) mostly recovers it there
(256-sentence benchmark, mean cosine: 3-bit g64 0.866 vs RTN 0.854 vs HQQ default
0.842; 2-bit g64 0.344 vs RTN 0.382 vs HQQ default 0.156).

Example:
  >>> import jax
  >>> w = jax.random.normal(jax.random.key(0), (128, 16))
  >>> qa = hqq(w, HQQConfig(bits=4, group_size=64))
  >>> qa.zero.shape
  (2, 16)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxparams.quant import common
from jaxparams.quant import record as qrec
from jaxparams.quant.qarray import QArray, make_int_qarray

__all__ = ["HQQConfig", "HQQ_RECORD", "hqq", "shrink_lp"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class HQQConfig:
  """HQQ settings (defaults as ``hqq``'s ``BaseQuantizeConfig`` / proximal solver).

  Attributes:
    bits: 2, 3, 4 or 8.
    group_size: rows per group along K (HQQ default 64); -1/None = per-channel.
    lp_norm: p of the l_p error norm (0.7).
    beta: initial half-quadratic penalty (10.0).
    kappa: penalty growth per iteration (1.01).
    iters: maximum iterations (20).
    early_stop: stop at the first iteration whose mean abs error does not improve.
    round_zero: round the initial zero point to an integer; ``None`` = the
      reference default (True at 4 bits, False otherwise).
    optimize: run the solver at all (False gives plain min/max RTN with float zero).
  """

  bits: int = 4
  group_size: int | None = 64
  lp_norm: float = 0.7
  beta: float = 10.0
  kappa: float = 1.01
  iters: int = 20
  early_stop: bool = True
  round_zero: bool | None = None
  optimize: bool = True


def shrink_lp(x: jax.Array, beta, p: float) -> jax.Array:
  """Generalised soft-thresholding: ``sign(x) relu(|x| - |x|^(p-1) / beta)``."""
  ax = jnp.abs(x)
  if p == 1:
    return jnp.sign(x) * jax.nn.relu(ax - 1.0 / beta)
  return jnp.sign(x) * jax.nn.relu(ax - (1.0 / beta) * jnp.power(ax, p - 1.0))


@functools.partial(jax.jit, static_argnames=("cfg", "group"))
def _hqq_jit(w, *, cfg: HQQConfig, group: int):
  k, n = w.shape
  maxq = float(2 ** cfg.bits - 1)
  wg = w.astype(jnp.float32).reshape(k // group, group, n)
  wmin = jnp.min(wg, axis=1, keepdims=True)
  wmax = jnp.max(wg, axis=1, keepdims=True)
  s = jnp.minimum(maxq / (wmax - wmin), 2e4)   # inverse scale (inf -> 2e4 for flat groups)
  z = -wmin * s
  if cfg.round_zero:
    z = jnp.round(z)

  def step(z, beta):
    wq = jnp.clip(jnp.round(wg * s + z), 0.0, maxq)
    wr = (wq - z) / s
    we = shrink_lp(wg - wr, beta, cfg.lp_norm)
    z_new = jnp.mean(wq - (wg - we) * s, axis=1, keepdims=True)
    return z_new, jnp.mean(jnp.abs(wg - wr))

  def cond(state):
    i, _, _, _, stop = state
    return (i < cfg.iters) & ~stop

  def body(state):
    i, z, beta, best, _ = state
    z, err = step(z, beta)
    improved = err < best
    stop = ~improved if cfg.early_stop else jnp.bool_(False)
    return i + 1, z, beta * cfg.kappa, jnp.where(improved, err, best), stop

  if cfg.optimize:
    _, z, _, _, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), z, jnp.float32(cfg.beta), jnp.float32(1e4), jnp.bool_(False)))
  q = jnp.clip(jnp.round(wg * s + z), 0.0, maxq).reshape(k, n)
  return q.astype(jnp.int32), (1.0 / s)[:, 0, :], z[:, 0, :]


def _hqq(w: jax.Array, cfg: HQQConfig, *, name: str = "") -> QArray:
  # The math; bits, group size, shape, dtype and finiteness are the record's checks.
  bits = int(cfg.bits)
  if not 0 < cfg.lp_norm <= 1:
    raise ValueError(f"hqq: lp_norm must be in (0, 1], got {cfg.lp_norm}")
  if cfg.kappa <= 1 or cfg.beta <= 0 or cfg.iters < 1:
    raise ValueError(f"hqq: need beta > 0, kappa > 1, iters >= 1; got {cfg}")
  w = common.as_matrix(w, name=name)
  g = common.resolve_group_size(w.shape[0], cfg.group_size, name=name)
  round_zero = bits == 4 if cfg.round_zero is None else bool(cfg.round_zero)
  q, scale, zero = _hqq_jit(w, cfg=dataclasses.replace(cfg, bits=bits, round_zero=round_zero),
                            group=g)
  return make_int_qarray(q, scale, zero, bits=bits, group_size=g, dtype=w.dtype)


HQQ_RECORD = qrec.quantizer("hqq", _hqq, HQQConfig,
                            description="half-quadratic zero/scale optimisation")


def hqq(w: jax.Array, cfg: HQQConfig = HQQConfig(), *, name: str = "") -> QArray:
  """Quantizes ``w[K, N]`` with HQQ (zero-point optimisation, no calibration data)."""
  return qrec.call(HQQ_RECORD, w, cfg, name=name)
