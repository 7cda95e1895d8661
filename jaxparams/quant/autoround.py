"""AutoRound / SignRound (Cheng et al., arXiv 2309.05516): learned rounding and clipping.

Written independently from the reference ``intel/auto-round`` (``SignRoundQuantizer``,
``data_type/int.py``, ``sign_sgd.py``), with its defaults:

* learned per weight: a rounding offset ``V`` (shape of ``W``, starts at 0); per group and
  output column: ``alpha`` (max scale) and ``beta`` (min scale), start at 1 and are clamped
  to ``[0, 1]`` before every use;
* quantizer (asymmetric): ``lo = min(min W_g, 0) * beta``, ``hi = max(max W_g, 0) * alpha``,
  ``s = (hi - lo) / (2**b - 1)``, ``z = round(-lo / s)``,
  ``W~ = s * (clip(round(W / s + V) + z, 0, 2**b - 1) - z)``; ``round`` has the
  straight-through gradient. Symmetric: GPTQ's grid (``hi = -lo = absmax``,
  ``z = 2**(b-1)``). With ``V = 0, alpha = beta = 1`` this is :func:`~jaxparams.quant.rtn`
  bit for bit (same grid, same arithmetic). The scale stays float32 (the reference casts it
  to fp16; our packed layout stores float32 scales);
* loss: the block's output MSE against the full-precision block on full-precision inputs,
  the quantized block running on the previous quantized blocks' outputs
  (``enable_quanted_input``); padded tokens are left out (``valid_token_mask``);
* signed gradient descent: ``theta -= lr_t * sign(grad)``, ``lr_t = lr * (1 - t / iters)``
  (``LinearLR`` 1 -> 0), ``lr = minmax_lr = 1 / iters``; each iteration draws
  ``batch_size`` samples (a shuffled cyclic sampler, as ``IndexSampler``);
* best iterate: when an iteration's loss is below the best so far, the parameters that
  produced it are kept; the best ones are applied at the end (``not_use_best_mse=False``).

Two drivers run it: :func:`autoround_block` optimises all Linear layers of one transformer
block jointly (the reference; the streaming :func:`jaxparams.quant.quantize_checkpoint` calls
it block by block), the whole iteration loop in one ``lax.fori_loop``. The registered
per-matrix function :func:`autoround` is the layer-wise form used by ``quantize_tree`` /
``quantize_model``: the loss is the layer's output MSE, computed exactly from the
calibration Gram ``X^T X / n`` (full batch, so no sampling), or it exports the parameters a
block run learned (:class:`LearnedRounding`).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.calib import InputStats
  >>> from jaxparams.quant.rtn import RTNConfig, rtn
  >>> x = jax.random.normal(jax.random.key(0), (256, 64))
  >>> w = jax.random.normal(jax.random.key(1), (64, 16))
  >>> st = InputStats.from_inputs(x)
  >>> q0 = autoround(w, st, AutoRoundConfig(bits=4, group_size=32, iters=0))
  >>> bool(jnp.array_equal(q0.dequantize(), rtn(w, RTNConfig(bits=4, group_size=32)).dequantize()))
  True
  >>> q = autoround(w, st, AutoRoundConfig(bits=4, group_size=32, iters=50))
  >>> err = lambda qa: float(jnp.sum((x @ (qa.dequantize() - w)) ** 2))
  >>> err(q) < err(q0)
  True
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.calib.stats import InputStats
from jaxparams.quant import common
from jaxparams.quant import record as qrec
from jaxparams.quant.qarray import QArray, make_int_qarray

__all__ = ["AutoRoundConfig", "LearnedRounding", "autoround", "autoround_block", "init_params",
           "qdq", "signround_loop"]

_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoRoundConfig:
  """AutoRound settings (defaults as ``intel/auto-round``).

  Attributes:
    bits: 2, 3, 4 or 8.
    group_size: rows per group along K; -1/None = per-channel.
    symmetric: GPTQ's symmetric grid; default asymmetric (the reference's ``W4A16`` scheme is
      symmetric; the asymmetric grid is the one our other methods use and keeps the zero
      levels exact at 2-3 bits).
    iters: signed-gradient steps per block (0 = round-to-nearest).
    lr: step size of ``V``; None = ``1 / iters`` (5e-3 at 200 steps).
    minmax_lr: step size of ``alpha``/``beta``; None = ``lr``.
    batch_size: calibration samples per step.
    minmax_tuning: learn ``alpha``/``beta`` (``enable_minmax_tuning``).
    use_best: apply the best iterate rather than the last (``not not_use_best_mse``).
    seed: sampler seed.
  """

  bits: int = 4
  group_size: int | None = 128
  symmetric: bool = False
  iters: int = 200
  lr: float | None = None
  minmax_lr: float | None = None
  batch_size: int = 8
  minmax_tuning: bool = True
  use_best: bool = True
  seed: int = 42

  def rates(self) -> tuple[float, float]:
    """``(lr, minmax_lr)`` with the reference's fallbacks."""
    lr = self.lr if self.lr is not None else (1.0 / self.iters if self.iters > 0 else 5e-3)
    return float(lr), float(self.minmax_lr if self.minmax_lr is not None else lr)


@dataclasses.dataclass(frozen=True)
class LearnedRounding(InputStats):
  """Calibration statistics plus the ``(v, alpha, beta)`` a block run learned for one layer.

  Passed as ``stats`` to :func:`autoround`, it exports those parameters as packed codes
  (the statistics stay available for the report's output error).
  """

  v: jax.Array = None
  alpha: jax.Array = None
  beta: jax.Array = None


# ----------------------------------------------------------------------------- quantizer
def _round_ste(x: jax.Array) -> jax.Array:
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def init_params(w: jax.Array, group: int) -> dict[str, jax.Array]:
  """``{'v': zeros[K, N], 'alpha': ones[K/G, 1, N], 'beta': ones[K/G, 1, N]}``."""
  k, n = w.shape
  return {"v": jnp.zeros((k, n), jnp.float32), "alpha": jnp.ones((k // group, 1, n), jnp.float32),
          "beta": jnp.ones((k // group, 1, n), jnp.float32)}


def _grid(w: jax.Array, p: Mapping[str, jax.Array], bits: int, group: int, sym: bool):
  """``(wg, scale, zero, v)`` grouped ``[K/G, G, N]`` (scale/zero ``[K/G, 1, N]``)."""
  k, n = w.shape
  maxq = float(2 ** bits - 1)
  wg = w.astype(jnp.float32).reshape(k // group, group, n)
  alpha = jnp.clip(p["alpha"], 0.0, 1.0)
  beta = jnp.clip(p["beta"], 0.0, 1.0)
  lo = jnp.minimum(jnp.min(wg, axis=1, keepdims=True), 0.0) * beta
  hi = jnp.maximum(jnp.max(wg, axis=1, keepdims=True), 0.0) * alpha
  if sym:
    hi = jnp.maximum(-lo, hi)
    lo = jnp.where(lo < 0, -hi, lo)
  both0 = (lo == 0) & (hi == 0)
  lo = jnp.where(both0, -1.0, lo)
  hi = jnp.where(both0, 1.0, hi)
  scale = (hi - lo) / maxq
  zero = (jnp.full_like(scale, (maxq + 1) / 2) if sym else _round_ste(-lo / scale))
  return wg, scale, zero, p["v"].reshape(k // group, group, n)


def _codes(w, p, bits, group, sym, ste: bool):
  wg, scale, zero, v = _grid(w, p, bits, group, sym)
  r = _round_ste if ste else jnp.round
  q = jnp.clip(r(wg / scale + v) + zero, 0.0, float(2 ** bits - 1))
  return q, scale, zero


def qdq(w: jax.Array, p: Mapping[str, jax.Array], *, bits: int, group: int,
        sym: bool = False) -> jax.Array:
  """Differentiable quantize-dequantize ``W~[K, N]`` (float32) with learned ``p``."""
  q, scale, zero = _codes(w, p, bits, group, sym, ste=True)
  return ((q - zero) * scale).reshape(w.shape)


@functools.partial(jax.jit, static_argnames=("bits", "group", "sym"))
def _export(w, p, *, bits, group, sym):
  q, scale, zero = _codes(w, jax.lax.stop_gradient(p), bits, group, sym, ste=False)
  return q.reshape(w.shape).astype(jnp.int32), scale[:, 0, :], zero[:, 0, :]


# ----------------------------------------------------------------------------- SignSGD
def signround_loop(loss_fn: Callable[[Any, jax.Array], jax.Array], params: Any, *, iters: int,
                   lrs: Any, use_best: bool = True) -> tuple[Any, jax.Array, jax.Array]:
  """Signed gradient descent with linear decay and best-iterate checkpointing.

  ``loss_fn(params, t)`` is the loss of step ``t`` (it draws its own samples from ``t``);
  ``lrs`` is a pytree like ``params`` of base step sizes. Traceable: one ``lax.fori_loop``.

  Returns:
    ``(params, losses[iters], best_loss)``: the best (or last) parameters, every step's
    loss (measured before its update) and the loss of the returned parameters when
    ``use_best`` (else the last loss).
  """
  grad_fn = jax.value_and_grad(loss_fn)

  def body(t, c):
    p, best_p, best, losses = c
    loss, g = grad_fn(p, t)
    better = loss < best
    best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
    best = jnp.where(better, loss, best)
    decay = 1.0 - t.astype(jnp.float32) / iters
    p = jax.tree.map(lambda a, ga, lr: a - lr * decay * jnp.sign(ga), p, g, lrs)
    return p, best_p, best, losses.at[t].set(loss)

  init = (params, params, jnp.float32(jnp.inf), jnp.zeros((iters,), jnp.float32))
  p, best_p, best, losses = jax.lax.fori_loop(0, iters, body, init)
  if use_best:
    return best_p, losses, best
  return p, losses, losses[-1]


def _lrs(params: Mapping[str, Any], cfg: AutoRoundConfig, minmax: bool):
  lr, mlr = cfg.rates()
  return {k: {"v": jnp.float32(lr), "alpha": jnp.float32(mlr if minmax else 0.0),
              "beta": jnp.float32(mlr if minmax else 0.0)} for k in params}


# ----------------------------------------------------------------------------- layer-wise
@functools.partial(jax.jit, static_argnames=("bits", "group", "sym", "iters", "use_best"))
def _layerwise(w, gram, p0, lrs, *, bits, group, sym, iters, use_best):
  w32 = w.astype(jnp.float32)

  def loss_fn(p, t):
    del t
    d = qdq(w32, p["w"], bits=bits, group=group, sym=sym) - w32
    return jnp.sum(d * jnp.matmul(gram, d, precision=_HI)) / d.shape[1]

  p, losses, best = signround_loop(loss_fn, {"w": p0}, iters=iters, lrs=lrs, use_best=use_best)
  return p["w"], losses, best


def _check(cfg: AutoRoundConfig, name: str) -> int:
  bits = common.check_bits(cfg.bits, (2, 3, 4, 8), name=name, method="autoround")
  if cfg.iters < 0 or cfg.batch_size < 1:
    raise ValueError(f"autoround: need iters >= 0 and batch_size >= 1, got iters={cfg.iters}, "
                     f"batch_size={cfg.batch_size}")
  lr, mlr = cfg.rates()
  if not (lr >= 0 and mlr >= 0):
    raise ValueError(f"autoround: learning rates must be >= 0, got lr={lr}, minmax_lr={mlr}")
  return bits


def _autoround(w: jax.Array, stats: Any, cfg: AutoRoundConfig, *, name: str = "") -> QArray:
  # The math; bits, group size, shape, dtype and finiteness are the record's checks.
  bits = _check(cfg, name)
  w = common.as_matrix(w, name=name)
  k, n = w.shape
  g = common.resolve_group_size(k, cfg.group_size, name=name)
  sym = bool(cfg.symmetric)
  if isinstance(stats, LearnedRounding) and stats.v is not None:
    p = {"v": stats.v, "alpha": stats.alpha, "beta": stats.beta}
    want = init_params(w, g)
    for key, a in p.items():
      if tuple(a.shape) != tuple(want[key].shape):
        raise ValueError(f"autoround: learned {key} for {name or 'weight'!r} has shape "
                         f"{tuple(a.shape)}, expected {tuple(want[key].shape)}")
  else:
    if not isinstance(stats, InputStats):
      raise ValueError(f"autoround: {name or 'weight'!r} needs jaxparams.calib.InputStats, got "
                       f"{type(stats).__name__}")
    stats.check(k, name=name)
    common.check_finite(stats.xtx, name=name, what="calibration statistics")
    p = init_params(w, g)
    if cfg.iters > 0:
      lrs = _lrs({"w": p}, cfg, cfg.minmax_tuning)
      p, _, _ = _layerwise(w, stats.gram, p, lrs, bits=bits, group=g, sym=sym,
                           iters=int(cfg.iters), use_best=bool(cfg.use_best))
  q, scale, zero = _export(w, p, bits=bits, group=g, sym=sym)
  return make_int_qarray(q, scale, zero, bits=bits, group_size=g, dtype=w.dtype)


AUTOROUND_RECORD = qrec.quantizer(
    "autoround", _autoround, AutoRoundConfig, needs="hessian",
    params_check=lambda cfg, name: _check(cfg, name),
    description="AutoRound: signed-gradient learned rounding and min-max clipping")


def autoround(w: jax.Array, stats: InputStats | LearnedRounding,
              cfg: AutoRoundConfig = AutoRoundConfig(), *, name: str = "") -> QArray:
  """AutoRound of one matrix ``w[K, N]``; returns packed integer codes.

  Args:
    w: float weight, flax layout ``[K, N]``.
    stats: :class:`~jaxparams.calib.InputStats` (layer-wise AutoRound on the exact output
      MSE ``tr(D^T G D) / N``, ``G = X^T X / n``), or :class:`LearnedRounding` from
      :func:`autoround_block` (exports the learned parameters).
    cfg: :class:`AutoRoundConfig`.
    name: tree path for messages.

  Returns:
    QArray (kind 'int', codes/scale/zero as RTN's, so every exporter takes it).
  """
  return qrec.call(AUTOROUND_RECORD, w, cfg, stats, name=name)


# ----------------------------------------------------------------------------- block-wise
class _Sampler:
  """Shuffled cyclic index batches (the reference's ``IndexSampler``), drawn up front."""

  @staticmethod
  def draw(nsamples: int, batch_size: int, iters: int, seed: int) -> np.ndarray:
    bs = min(batch_size, nsamples)
    rng = np.random.default_rng(seed)
    out, perm, pos = [], rng.permutation(nsamples), 0
    for _ in range(iters):
      if pos + bs > nsamples:
        perm, pos = rng.permutation(nsamples), 0
      out.append(perm[pos:pos + bs])
      pos += bs
    return np.asarray(out, np.int32).reshape(iters, bs)


def autoround_block(apply: Callable[[Any, Any], jax.Array], params: Mapping[str, jax.Array],
                    configs: Mapping[str, AutoRoundConfig], inputs: Any, targets: jax.Array,
                    mask: jax.Array | None = None, *, name: str = ""
                    ) -> tuple[dict[str, dict[str, jax.Array]], np.ndarray]:
  """Learns the rounding of every layer in ``configs`` jointly, against one block's output.

  Args:
    apply: ``apply(flat_params, inputs) -> outputs[S, ...]`` of the block (flat ``/`` paths).
    params: the block's full-precision parameters, flat.
    configs: ``{path: AutoRoundConfig}`` of the layers to learn (``[K, N]`` kernels);
      ``iters``, ``batch_size``, ``seed`` and ``use_best`` must agree.
    inputs: a pytree whose leaves have the sample axis first (``S`` samples), the block's
      inputs from the already quantized blocks (a leaf with a leading 1 is shared).
    targets: the full-precision block's outputs on full-precision inputs ``[S, ...]``.
    mask: ``[S, T]`` valid-token mask (1 = token) when outputs are ``[S, T, H]``.
    name: block name for messages.

  Returns:
    ``({path: {'v', 'alpha', 'beta'}}, losses[iters])``.
  """
  cfgs = list(configs.values())
  if not cfgs:
    return {}, np.zeros((0,), np.float32)
  c0 = cfgs[0]
  for c in cfgs:
    _check(c, name)
    if (c.iters, c.batch_size, c.seed, c.use_best) != (c0.iters, c0.batch_size, c0.seed,
                                                       c0.use_best):
      raise ValueError(f"autoround: the layers of block {name!r} need one iters/batch_size/seed/"
                       f"use_best, got {sorted({(x.iters, x.batch_size, x.seed) for x in cfgs})}")
  groups = {p: common.resolve_group_size(params[p].shape[0], c.group_size, name=p)
            for p, c in configs.items()}
  p0 = {p: init_params(params[p], groups[p]) for p in configs}
  if c0.iters == 0:
    return p0, np.zeros((0,), np.float32)
  nsamples = int(jax.tree.leaves(targets)[0].shape[0])
  idx = jnp.asarray(_Sampler.draw(nsamples, c0.batch_size, c0.iters, c0.seed))
  lrs = {p: _lrs({p: None}, configs[p], configs[p].minmax_tuning)[p] for p in configs}
  spec = tuple((p, int(configs[p].bits), groups[p], bool(configs[p].symmetric))
               for p in configs)
  fp = {p: jnp.asarray(v) for p, v in params.items()}
  mk = None if mask is None else jnp.asarray(mask, jnp.float32)
  best_p, losses = _block_jit(apply, spec, c0.iters, bool(c0.use_best), fp, p0, lrs, inputs,
                              targets, mk, idx)
  return best_p, np.asarray(losses)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _block_jit(apply, spec, iters, use_best, fp, p0, lrs, inputs, targets, mask, idx):
  def take(a, ix):
    return a if a.shape[0] == 1 else a[ix]

  def loss_fn(p, t):
    ix = idx[t]
    cur = dict(fp)
    for path, bits, group, sym in spec:
      cur[path] = qdq(fp[path], p[path], bits=bits, group=group,
                      sym=sym).astype(fp[path].dtype)
    x = jax.tree.map(lambda a: take(a, ix), inputs)
    y = apply(cur, x).astype(jnp.float32)
    d2 = (y - targets[ix].astype(jnp.float32)) ** 2
    if mask is None:
      return jnp.mean(d2)
    m = mask[ix].reshape(mask[ix].shape + (1,) * (d2.ndim - mask.ndim))
    return jnp.sum(d2 * m) / jnp.maximum(jnp.sum(m) * d2.shape[-1], 1.0)

  p, losses, _ = signround_loop(loss_fn, p0, iters=iters, lrs=lrs, use_best=use_best)
  return p, losses
