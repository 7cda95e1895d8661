"""OmniQuant (Shao et al., ICLR 2024): learnable weight clipping (LWC) and learnable
equivalent transformation (LET), trained block by block against the block's output.

**LWC.** Per group of ``G`` input rows and per output column, two logits ``gamma``,
``beta`` (initialised to ``lwc_init = 4.0``, sigmoid 0.982) shrink the group's max and
min: ``hi = sigmoid(gamma) * max(w_g)``, ``lo = sigmoid(beta) * min(w_g)``; the grid is
then the min-max grid of :mod:`jaxparams.quant.rtn` (``scale = (hi - lo) / (2**b - 1)``,
``zero = round(-lo / scale)``, the range kept to contain 0, as GPTQ's ``quant.py`` and our
RTN; symmetric: RTN's ``absmax / (2**(b-1) - 1)`` with zero ``2**(b-1)``). The rounding of ``w / scale`` passes gradients straight through. With both factors
at 1 (logits -> +inf) LWC *is* min-max RTN, code for code. Differences from the reference
(``quantize/quantizer.py``): its range does not force 0 in (weight groups straddle 0
anyway), and its ``scale >= 1e-5`` floor is relative here (``>= 1e-4`` of the unclipped
scale) so that clipping 1.0 stays exactly RTN.

**LET.** Per-channel scales ``s`` (``X~ = X / s``) folded where the fold is exact for a
Llama block with RMSNorm (no shift, as the reference for Llama at HEAD): input norm
weight ``/ s`` and the q/k/v kernels' input rows ``* s``; post-attention norm ``/ s`` and
gate/up rows ``* s``; v kernel columns (and bias) ``/ s`` and the o kernel's rows
``* s`` (repeated over the query heads of each kv head under GQA). Initialised as the
reference, ``s = max|X|**alpha / max|W|**(1-alpha)`` (``alpha = 0.5``), ``|s| >= 1e-2``.
The q/k pair is not scaled (exact under RoPE only with scales tied over rotated pairs).
Blocks without these pairs (BERT's post-norm blocks) get LWC only.

**Training** (block-wise, :func:`omniquant_block`): AdamW (``lwc_lr`` 1e-2, ``let_lr``
5e-3, weight decay 0) on the mean squared error between the block run with fake-quantized
weights on the quantized model's inputs and the full-precision block on the full-precision
inputs, ``epochs`` passes over the calibration batches (one step per batch), jit-compiled.
The reference defaults are 20 epochs over 128 x 2048-token WikiText-2 samples; its
weight-only scripts train LWC only, hence ``let=False`` by default.

The registry record (``needs='hessian'``) is the per-matrix form of the same LWC,
trained on the layer's output error ``tr(dW^T H dW)`` (used by the tree API); the
streaming driver (:func:`jaxparams.quant.quantize_checkpoint`) runs the block-wise form.

Example:
  >>> import jax, jax.numpy as jnp
  >>> w = jax.random.normal(jax.random.key(0), (64, 8))
  >>> x = jax.random.normal(jax.random.key(1), (256, 64))
  >>> qa = omniquant(w, x.T @ x, OmniQuantConfig(bits=3, group_size=32, matrix_steps=20))
  >>> qa.bits, qa.shape
  (3, (64, 8))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from jaxparams import tree as jtree
from jaxparams.calib.capture import input_abs_max
from jaxparams.quant import common
from jaxparams.quant import record as qrec
from jaxparams.quant.qarray import QArray, make_int_qarray

__all__ = ["OmniQuantConfig", "omniquant", "lwc_fake", "lwc_qarray", "let_pairs", "let_fold",
           "omniquant_block", "BlockResult"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OmniQuantConfig:
  """OmniQuant settings (reference defaults of OpenGVLab/OmniQuant's weight-only scripts).

  Attributes:
    bits: 2, 3, 4 or 8.
    group_size: rows per group along K; ``-1``/``None`` per-channel.
    symmetric: absmax grid instead of min/max.
    epochs: passes over the calibration batches per block (reference: 20; 40 for W2).
    lwc_lr: AdamW learning rate of the clipping logits.
    let_lr: AdamW learning rate of the LET scales.
    weight_decay: AdamW weight decay (reference: 0).
    lwc_init: initial clipping logits (sigmoid(4) = 0.982).
    let: train LET scales as well (reference weight-only scripts: off).
    let_alpha: migration strength of the LET initialisation.
    matrix_steps: Adam steps of the per-matrix form (tree API, Hessian loss).
  """

  bits: int = 4
  group_size: int | None = 128
  symmetric: bool = False
  epochs: int = 20
  lwc_lr: float = 1e-2
  let_lr: float = 5e-3
  weight_decay: float = 0.0
  lwc_init: float = 4.0
  let: bool = False
  let_alpha: float = 0.5
  matrix_steps: int = 200


def _check(cfg: OmniQuantConfig, k: int, name: str) -> int:
  common.check_bits(cfg.bits, (2, 3, 4, 8), name=name, method="omniquant")
  if cfg.epochs < 0 or cfg.matrix_steps < 0:
    raise ValueError(f"omniquant: epochs and matrix_steps must be >= 0, got {cfg.epochs}, "
                     f"{cfg.matrix_steps}")
  return common.resolve_group_size(k, cfg.group_size, name=name)


def _round_ste(x: jax.Array) -> jax.Array:
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def _lwc_grid(w: jax.Array, gamma: jax.Array, beta: jax.Array, bits: int, symmetric: bool,
              g: int):
  """``(wg [K/G, G, N], scale, zero [K/G, 1, N])`` with the clipped min-max grid."""
  k, n = w.shape
  wg = w.astype(jnp.float32).reshape(k // g, g, n)
  hi0 = jnp.max(wg, axis=1, keepdims=True)
  lo0 = jnp.min(wg, axis=1, keepdims=True)
  hi = jax.nn.sigmoid(gamma)[:, None, :] * hi0
  lo = jax.nn.sigmoid(beta)[:, None, :] * lo0
  if symmetric:             # RTN's absmax grid: scale = absmax / (2**(b-1) - 1), zero 2**(b-1)
    qmax = float(2 ** (bits - 1) - 1)
    amax = jnp.maximum(hi, -lo)
    raw = jax.lax.stop_gradient(jnp.where(amax > 0, jnp.maximum(hi0, -lo0) / qmax, 1.0))
    scale = jnp.where(amax > 0, amax / qmax, 1.0)
    zero = jnp.full_like(scale, float(2 ** (bits - 1)))
  else:
    scale, zero = common.minmax_params(lo, hi, bits, False)
    raw, _ = common.minmax_params(jax.lax.stop_gradient(lo0), jax.lax.stop_gradient(hi0), bits,
                                  False)
  scale = jnp.maximum(scale, 1e-4 * raw)
  zero = jax.lax.stop_gradient(zero)
  return wg, scale, zero


def lwc_fake(w: jax.Array, gamma: jax.Array, beta: jax.Array, *, bits: int, group_size: int,
             symmetric: bool = False) -> jax.Array:
  """Fake-quantized ``w[K, N]`` (float32) under clipping logits ``gamma, beta [K/G, N]``.

  Differentiable in ``w``, ``gamma`` and ``beta`` (straight-through rounding).
  """
  wg, scale, zero = _lwc_grid(w, gamma, beta, bits, symmetric, group_size)
  q = jnp.clip(_round_ste(wg / scale) + zero, 0.0, float(2 ** bits - 1))
  return ((q - zero) * scale).reshape(w.shape)


def lwc_qarray(w: jax.Array, gamma: jax.Array, beta: jax.Array, *, bits: int, group_size: int,
               symmetric: bool = False, dtype: Any = None) -> QArray:
  """The packed :class:`QArray` (integer codes, scale, zero) of :func:`lwc_fake`."""
  wg, scale, zero = _lwc_grid(w, gamma, beta, bits, symmetric, group_size)
  q = common.quantize_codes(wg, scale, zero, bits).reshape(w.shape)
  return make_int_qarray(q.astype(jnp.int32), scale[:, 0, :], zero[:, 0, :], bits=bits,
                         group_size=group_size, dtype=dtype or w.dtype)


def _init_logits(w: jax.Array, cfg: OmniQuantConfig, g: int):
  shape = (w.shape[0] // g, w.shape[1])
  return (jnp.full(shape, cfg.lwc_init, jnp.float32), jnp.full(shape, cfg.lwc_init, jnp.float32))


def _optimizer(cfg: OmniQuantConfig) -> optax.GradientTransformation:
  return optax.multi_transform(
      {"lwc": optax.adamw(cfg.lwc_lr, weight_decay=cfg.weight_decay),
       "let": optax.adamw(cfg.let_lr, weight_decay=cfg.weight_decay)},
      {"lwc": "lwc", "let": "let"})


# ----------------------------------------------------------------------------- per matrix
def _omniquant(w: jax.Array, stats: Any, cfg: OmniQuantConfig, *, name: str = "") -> QArray:
  # The math; bits, group size, shape, dtype and finiteness are the record's checks.
  w = common.as_matrix(w, name=name)
  g = _check(cfg, w.shape[0], name)
  h = getattr(stats, "gram", stats)
  h = jnp.asarray(h, jnp.float32)
  if h.shape != (w.shape[0], w.shape[0]):
    raise ValueError(f"omniquant: Hessian of {name or 'weight'!r} has shape {tuple(h.shape)}, "
                     f"expected {(w.shape[0], w.shape[0])}")
  gamma, beta = _fit_matrix(w.astype(jnp.float32), h / jnp.maximum(jnp.trace(h), 1e-30),
                            cfg, g)
  return lwc_qarray(w, gamma, beta, bits=cfg.bits, group_size=g, symmetric=cfg.symmetric,
                    dtype=w.dtype)


OMNIQUANT_RECORD = qrec.quantizer(
    "omniquant", _omniquant, OmniQuantConfig, needs="hessian",
    description="OmniQuant: learned weight clipping (+ equivalent transformation), block-wise")


def omniquant(w: jax.Array, stats: Any, cfg: OmniQuantConfig = OmniQuantConfig(), *,
              name: str = "") -> QArray:
  """LWC of one matrix trained on its layer-output error (the tree API's form).

  Args:
    w: float weight ``[K, N]``.
    stats: :class:`~jaxparams.calib.InputStats` or a ``[K, K]`` Hessian / ``X^T X``.
    cfg: :class:`OmniQuantConfig` (``matrix_steps`` Adam steps at ``lwc_lr``).
    name: tree path for messages.

  Returns:
    An integer :class:`QArray` (min-max layout, as RTN/GPTQ).
  """
  return qrec.call(OMNIQUANT_RECORD, w, cfg, stats, name=name)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _fit_matrix(w, h, cfg, g):
  opt = optax.adamw(cfg.lwc_lr, weight_decay=cfg.weight_decay)
  theta = _init_logits(w, cfg, g)

  def loss(t):
    d = lwc_fake(w, *t, bits=cfg.bits, group_size=g, symmetric=cfg.symmetric) - w
    return jnp.sum(d * (h @ d))

  def step(carry, _):
    t, s = carry
    grad = jax.grad(loss)(t)
    upd, s = opt.update(grad, s, t)
    return (optax.apply_updates(t, upd), s), None

  (theta, _), _ = jax.lax.scan(step, (theta, opt.init(theta)), None, length=cfg.matrix_steps)
  return theta


# ----------------------------------------------------------------------------- LET
class _Pair(NamedTuple):
  kind: str                 # 'norm' (norm scale -> consumer rows) or 'vo'
  src: str                  # norm scale path, or v kernel path
  dst: tuple[str, ...]      # consumer kernel paths


def let_pairs(flat: Mapping[str, Any]) -> list[_Pair]:
  """The exactly foldable LET pairs of a block's flat params (relative paths)."""
  pairs = []
  for norm, cons in (("input_layernorm/scale", ("attn/q_proj", "attn/k_proj", "attn/v_proj")),
                     ("post_attention_layernorm/scale", ("mlp/gate_proj", "mlp/up_proj"))):
    # an RMSNorm (no bias) feeding only these linears (pre-norm block): the fold is exact
    if (norm in flat and norm.replace("scale", "bias") not in flat
        and all(f"{c}/kernel" in flat for c in cons)):
      pairs.append(_Pair("norm", norm, tuple(f"{c}/kernel" for c in cons)))
  if "attn/v_proj/kernel" in flat and "attn/o_proj/kernel" in flat:
    nv, no = flat["attn/v_proj/kernel"].shape[1], flat["attn/o_proj/kernel"].shape[0]
    if no % nv == 0 and "attn/q_norm/scale" not in flat:
      pairs.append(_Pair("vo", "attn/v_proj/kernel", ("attn/o_proj/kernel",)))
  return pairs


def _clamp_scale(s: jax.Array) -> jax.Array:
  return jnp.where(jnp.abs(s) < 1e-2, jnp.where(s < 0, -1e-2, 1e-2), s)


def let_fold(flat: Mapping[str, jax.Array], pairs: Sequence[_Pair],
             scales: Mapping[str, jax.Array], head_dim: int | None = None
             ) -> dict[str, jax.Array]:
  """Folds LET scales into a block's params; the block function is unchanged (exactly).

  Args:
    flat: the block's flat params (relative paths such as ``attn/q_proj/kernel``).
    pairs: from :func:`let_pairs`.
    scales: ``{pair.src: s}``; ``s`` has the size of the pair's channel dimension.
    head_dim: the attention head size (for the v->o pair under grouped-query attention).

  Returns:
    New flat params (float32 for the folded leaves).
  """
  out = dict(flat)
  for p in pairs:
    s = _clamp_scale(scales[p.src].astype(jnp.float32))
    if p.kind == "norm":
      out[p.src] = out[p.src].astype(jnp.float32) / s
      for d in p.dst:
        out[d] = out[d].astype(jnp.float32) * s[:, None]
    else:
      vb = p.src.replace("kernel", "bias")
      out[p.src] = out[p.src].astype(jnp.float32) / s[None, :]
      if vb in out:
        out[vb] = out[vb].astype(jnp.float32) / s
      o = p.dst[0]
      nv, no = s.shape[0], out[o].shape[0]
      hd = head_dim or nv
      rep = jnp.repeat(s.reshape(nv // hd, hd), no // nv, axis=0).reshape(no)
      out[o] = out[o].astype(jnp.float32) * rep[:, None]
  return out


def _head_dim(module: nn.Module) -> int | None:
  c = getattr(module, "config", None)
  return getattr(c, "head_dim_", None) if c is not None else None


def _let_init(module, flat, pairs, states, alpha):
  wanted = [p.dst[0] for p in pairs]
  amax = input_abs_max(module, jtree.unflatten(dict(flat)), states, wanted)
  hd = _head_dim(module)
  scales = {}
  for p in pairs:
    if p.kind == "norm":
      x = amax[p.dst[0]]
      wmax = jnp.max(jnp.stack([jnp.max(jnp.abs(flat[d]), axis=1) for d in p.dst]), axis=0)
    else:   # input of o (repeated per query head): max over the heads sharing a kv head
      o = flat[p.dst[0]]
      nv, no = flat[p.src].shape[1], o.shape[0]
      h = hd or nv
      x = jnp.max(amax[p.dst[0]].reshape(nv // h, no // nv, h), axis=1).reshape(nv)
      wmax = jnp.max(jnp.abs(o), axis=1).reshape(nv // h, no // nv, h).max(axis=1).reshape(nv)
    s = jnp.maximum(x, 1e-5) ** alpha / jnp.maximum(wmax, 1e-5) ** (1 - alpha)
    scales[p.src] = s.astype(jnp.float32)
  return scales


# ----------------------------------------------------------------------------- block-wise
class BlockResult(NamedTuple):
  """What :func:`omniquant_block` returns.

  Attributes:
    qarrays: ``{path: QArray}`` of the quantized kernels.
    params: the block's flat params after LET folding with the quantized kernels
      dequantized (float32) -- what the next block's inputs are computed with.
    changed: full-precision leaves LET changed (norm scales, v bias): ``{path: array}``.
    losses: mean training loss per epoch (first entry: before training).
  """
  qarrays: dict
  params: dict
  changed: dict
  losses: list


def omniquant_block(module: nn.Module, flat: Mapping[str, jax.Array],
                    configs: Mapping[str, OmniQuantConfig], states: Sequence,
                    targets: Sequence[jax.Array], masks: Sequence[Any] | None = None
                    ) -> BlockResult:
  """Trains OmniQuant's LWC (and LET when ``cfg.let``) on one block; returns its quantization.

  Args:
    module: the block (unbound flax module).
    flat: its flat params (relative paths).
    configs: ``{kernel path: OmniQuantConfig}`` of the kernels to quantize; the training
      settings (epochs, rates, LET) are taken from the first.
    states: per calibration batch the block's ``(args, kwargs)`` on the quantized model.
    targets: per batch the full-precision block's output on the full-precision inputs.
    masks: per batch a ``[batch, seq]`` token mask (padding excluded from the loss) or None.

  Returns:
    :class:`BlockResult`.
  """
  if not configs:
    raise ValueError("omniquant_block: no kernels to quantize")
  paths = list(configs)
  cfg0 = configs[paths[0]]
  base = {p: jnp.asarray(v) for p, v in flat.items()}
  groups = {p: _check(c, base[p].shape[0], p) for p, c in configs.items()}
  pairs = let_pairs(base) if cfg0.let else []
  hd = _head_dim(module)
  theta = {"lwc": {p: _init_logits(base[p], configs[p], groups[p]) for p in paths},
           "let": _let_init(module, base, pairs, states, cfg0.let_alpha) if pairs else {}}
  spec = {p: (configs[p].bits, groups[p], configs[p].symmetric) for p in paths}
  masks = list(masks) if masks is not None else [None] * len(states)

  def build(t, b):
    p = let_fold(b, pairs, t["let"], hd) if pairs else dict(b)
    for k, (bits, g, sym) in spec.items():
      p[k] = lwc_fake(p[k], *t["lwc"][k], bits=bits, group_size=g, symmetric=sym
                      ).astype(b[k].dtype)
    return jtree.unflatten(p)

  def loss_fn(t, b, a, kw, y, m):
    out = module.apply({"params": build(t, b)}, *a, **kw).astype(jnp.float32)
    d = jnp.square(out - y.astype(jnp.float32))
    if m is None:
      return jnp.mean(d)
    m = m.astype(jnp.float32)[..., None]
    return jnp.sum(d * m) / (jnp.maximum(jnp.sum(m), 1.0) * d.shape[-1])

  opt = _optimizer(cfg0) if pairs else optax.multi_transform(
      {"lwc": optax.adamw(cfg0.lwc_lr, weight_decay=cfg0.weight_decay),
       "let": optax.set_to_zero()}, {"lwc": "lwc", "let": "let"})

  @jax.jit
  def step(t, s, b, a, kw, y, m):
    val, grad = jax.value_and_grad(loss_fn)(t, b, a, kw, y, m)
    upd, s = opt.update(grad, s, t)
    return optax.apply_updates(t, upd), s, val

  evaluate = jax.jit(loss_fn)
  ostate = opt.init(theta)
  losses = [float(np.mean([float(evaluate(theta, base, a, kw, y, m))
                           for (a, kw), y, m in zip(states, targets, masks)]))]
  for _ in range(cfg0.epochs):
    vals = []
    for (a, kw), y, m in zip(states, targets, masks):
      theta, ostate, v = step(theta, ostate, base, a, kw, y, m)
      vals.append(v)
    losses.append(float(np.mean([float(v) for v in vals])))
  folded = let_fold(base, pairs, theta["let"], hd) if pairs else dict(base)
  qarrays, params = {}, dict(folded)
  for k, (bits, g, sym) in spec.items():
    qa = lwc_qarray(folded[k], *theta["lwc"][k], bits=bits, group_size=g, symmetric=sym,
                    dtype=base[k].dtype)
    qarrays[k] = qa
    params[k] = qa.dequantize(jnp.float32)
  changed = {k: v.astype(base[k].dtype) for k, v in folded.items()
             if k not in spec and v is not base[k]}
  for k in list(params):
    params[k] = params[k].astype(base[k].dtype)
  return BlockResult(qarrays, params, changed, losses)
