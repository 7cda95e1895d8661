"""Outlier removal + quantization of a model, block by block: rotation, SmoothQuant, W/A bits.

:func:`quantize_outliers` composes, for any weight method of the registry (RTN, GPTQ,
AutoRound, AWQ, decoupleQ, HQQ, NF4, ...):

1. rotation (:mod:`jaxparams.quant.rotate`): the residual Hadamard folded into the decoders,
   online Hadamards where the math needs them (or on every Linear of BERT/Gemma);
2. in execution order, block by block (GPTQ's sequential procedure): the block's layer inputs
   are captured with :func:`jaxparams.calib.capture_inputs` from the model whose earlier blocks
   are already quantized (weights *and* activations), then per Linear

   * SmoothQuant scales (:mod:`jaxparams.quant.smooth`; ``smooth=alpha`` or ``smooth='auto'``
     for a per-site alpha search), folded into the preceding norm where there is one;
   * learned rotation (``rotate='learned'``: :mod:`jaxparams.quant.spinquant`'s Cayley SGD from
     the Hadamard start, on that layer's inputs);
   * the weight method on ``W' = R^T diag(s) W`` with the statistics of ``x' = (x / s) R``
     (exact ``X'^T X'``: the rotated rows themselves, not a rotated estimate);
   * per-token activation quantization of ``x'`` (``act_bits``: W8A8, W4A8, W4A4).

The result runs through the ``dot=`` injection point: ``module_cls(result.config,
dot=online_dot)``; :func:`~jaxparams.quant.rotate.to_stock` turns a weight-only result into
stock full-precision weights (transforms multiplied back).

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxparams as jp
  >>> cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...     num_hidden_layers=1, num_attention_heads=2)
  >>> model = jp.models.Llama(cfg)
  >>> ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 32)
  >>> params = model.init(jax.random.key(0), ids)['params']
  >>> res = quantize_outliers(model, params, [('**', ('rtn', {'group_size': 16}))], [ids],
  ...                         OutlierConfig(rotate='hadamard', act_bits=8))
  >>> res.report.num_quantized
  7
  >>> out = jp.models.Llama(res.config, dot=jp.quant.online.online_dot).apply(
  ...     {'params': res.params}, ids)
  >>> out.shape
  (2, 8, 32)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree
from jaxparams.calib.capture import as_call, block_of, capture_inputs, check_batches, linear_order
from jaxparams.calib.stats import InputStats
from jaxparams.quant import rules as qrules
from jaxparams.quant.online import OnlineLinear, is_online, online_dot
from jaxparams.quant.rotate import RotateConfig, folds, rotate
from jaxparams.quant.smooth import search_alpha, smooth_scales
from jaxparams.quant.spinquant import LearnConfig, learn_rotation

__all__ = ["OutlierConfig", "OutlierResult", "quantize_outliers", "ROTATIONS"]

ROTATIONS = ("hadamard", "random", "learned")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutlierConfig:
  """What :func:`quantize_outliers` does besides the weight method.

  Attributes:
    rotate: None, ``'hadamard'``, ``'random'`` or ``'learned'`` (SpinQuant, from Hadamard).
    smooth: None, a SmoothQuant alpha in [0, 1], or ``'auto'`` (per-site search).
    act_bits: per-token activation bits of the quantized Linears (0, 8 or 4).
    act_clip: activation clip ratio (QuaRot: 1.0 in code).
    seed: seed of the random signs.
    learn: Cayley SGD settings for ``rotate='learned'``.
  """
  rotate: str | None = None
  smooth: float | str | None = None
  act_bits: int = 0
  act_clip: float = 1.0
  seed: int = 0
  learn: LearnConfig = LearnConfig()

  def __post_init__(self):
    if self.rotate is not None and self.rotate not in ROTATIONS:
      raise ValueError(f"OutlierConfig.rotate {self.rotate!r} unknown; valid: "
                       f"{[None, *ROTATIONS]}")
    if self.smooth is not None and self.smooth != "auto" and not (
        isinstance(self.smooth, (int, float)) and 0.0 <= self.smooth <= 1.0):
      raise ValueError(f"OutlierConfig.smooth must be None, 'auto' or an alpha in [0, 1], got "
                       f"{self.smooth!r}")
    if self.act_bits not in (0, 4, 8):
      raise ValueError(f"OutlierConfig.act_bits must be 0, 4 or 8, got {self.act_bits}")


class OutlierResult(NamedTuple):
  """``params`` (OnlineLinear / QArray leaves), the model ``config`` to run them with, the
  quantization ``report``, and ``log``: per layer ``{path: {...}}`` (alpha, learned loss)."""
  params: Any
  config: Any
  report: Any
  log: dict


def _wbits(spec: tuple[str, Any]) -> tuple[int, int]:
  cfg = spec[1]
  bits = getattr(cfg, "bits", 4)
  group = getattr(cfg, "group_size", getattr(cfg, "block_size", 128))
  return int(bits), int(group if group else -1)


def _norm_of(path: str, config: Any) -> str | None:
  """The decoder norm that feeds ``path`` (None where the input is not a norm's output)."""
  if not folds(config):
    return None
  blk, rest = path.split("/", 1)
  if rest.startswith("attn/") and rest.split("/")[1] in ("q_proj", "k_proj", "v_proj",
                                                          "qkv_proj"):
    return f"{blk}/input_layernorm/scale"
  if rest.startswith("mlp/") and rest.split("/")[1] in ("gate_proj", "up_proj", "gate_up_proj"):
    return f"{blk}/post_attention_layernorm/scale"
  return None


def _rows(module, current, batches, paths) -> dict[str, np.ndarray]:
  got: dict[str, list] = {}
  for b in batches:
    a, kw = as_call(b)
    xs = capture_inputs(module, current, *a, paths=paths, **kw)
    for p, x in xs.items():
      got.setdefault(p, []).append(np.asarray(x, np.float32))
  return {p: np.concatenate(v) for p, v in got.items()}


def quantize_outliers(module: Any, params: Any, rules: Any, batches: Sequence[Any],
                      cfg: OutlierConfig = OutlierConfig(), *,
                      keep: Sequence[Any] = qrules.DEFAULT_KEEP,
                      progress: Callable[[str, int, int], None] | None = None) -> OutlierResult:
  """Rotates/smooths and quantizes ``params`` block by block (module doc).

  Args:
    module: the model (``Llama``-family, ``Gemma``, ``Bert``), built from its config.
    params: full-precision params.
    rules: weight rules as for :func:`jaxparams.quant.quantize_tree`.
    batches: calibration batches (as :func:`jaxparams.calib.collect_stats` takes them).
    cfg: :class:`OutlierConfig`.
    keep: full-precision defaults of the rules.
    progress: ``progress(path, index, total)`` before each layer.

  Returns:
    :class:`OutlierResult`.
  """
  config = module.config
  if batches is None:
    needs = cfg.smooth is not None or cfg.rotate == "learned"
    if needs:
      raise ValueError("quantize_outliers: smoothing and learned rotations need calibration "
                       "batches")
  else:
    batches = check_batches(batches)
  if cfg.rotate is not None:
    mode = "hadamard" if cfg.rotate == "learned" else cfg.rotate
    rot = rotate(params, config, RotateConfig(mode=mode, seed=cfg.seed))
    params, config = rot.params, rot.config
  run_module = type(module)(config, dot=online_dot)
  flat = jtree.flatten(params, is_leaf=lambda v: is_online(v) or not isinstance(v, dict))
  plain = {p: (v.w if is_online(v) else v) for p, v in flat.items()}
  plan, reasons = qrules.plan_tree(plain, rules, keep=keep)
  todo = [p for p, s in plan.items() if s is not None]
  if batches is None:
    calibrated = [p for p in todo if qrules.is_calibrated(plan[p][0])]
    if calibrated:
      raise ValueError(f"quantize_outliers: method {plan[calibrated[0]][0]!r} (for "
                       f"{calibrated[0]!r}) needs calibration batches")
    order = list(todo)
  else:
    order = [p for p in linear_order(run_module, params, batches[0]) if p in todo]
    order += [p for p in todo if p not in order]
  groups: list[list[str]] = []
  for p in order:
    if groups and block_of(groups[-1][0]) == block_of(p):
      groups[-1].append(p)
    else:
      groups.append([p])
  current = dict(flat)
  report = qrules.QuantReport()
  log: dict[str, dict] = {}
  done = 0
  for group in groups:
    rows = {} if batches is None else _rows(run_module, jtree.unflatten(current), batches,
                                            group)
    if cfg.smooth is not None:
      _smooth_group(group, rows, current, plan, cfg, config, log)
    for p in group:
      if progress is not None:
        progress(p, done, len(order))
      current[p] = _quantize_one(p, current[p], rows.get(p), plan[p], reasons[p], report,
                                 cfg, config, log)
      done += 1
  final = qrules.finish_report(plain, report, reasons)
  return OutlierResult(jtree.unflatten(current), config, final, log)


def _as_online(leaf: Any) -> OnlineLinear:
  return leaf if is_online(leaf) else OnlineLinear(w=leaf)


def _smooth_group(group, rows, current, plan, cfg, config, log) -> None:
  """SmoothQuant scales for the group's Linears (shared per norm where one feeds them)."""
  by_norm: dict[str, list[str]] = {}
  for p in group:
    if p in rows:
      by_norm.setdefault(_norm_of(p, config) or p, []).append(p)
  for key, paths in by_norm.items():
    x = rows[paths[0]]
    leaves = [_as_online(current[p]) for p in paths]
    # the consumers' weights in the basis the input x is in: W_x = R W'
    ws = [lf.rotation() @ lf.weight() for lf in leaves]
    bits, group_size = _wbits(plan[paths[0]])
    if cfg.smooth == "auto":
      alpha, s = search_alpha(x, ws, bits=bits, group=group_size, act_bits=cfg.act_bits,
                              act_clip=cfg.act_clip, seed=cfg.seed)
    else:
      alpha = float(cfg.smooth)
      s = smooth_scales(np.abs(x).max(axis=0), np.max([np.abs(w).max(axis=1) for w in ws], 0),
                        alpha)
    for p, lf, w in zip(paths, leaves, ws):
      log.setdefault(p, {})["alpha"] = alpha
      r = lf.rotation()
      wnew = (r.T @ (s[:, None] * w)).astype(np.float32)
      if key != p:   # folded into the norm below: the layer sees x / s already
        current[p] = dataclasses.replace(lf, w=jnp.asarray(wnew)) if is_online(current[p]) \
            else jnp.asarray(wnew)
      else:
        current[p] = dataclasses.replace(lf, w=jnp.asarray(wnew), smooth=jnp.asarray(
            s, jnp.float32))
      rows[p] = rows[p] / s.astype(np.float32) if key != p else rows[p]
    if key != paths[0]:
      g = np.asarray(current[key], np.float64)
      current[key] = jnp.asarray((g / s).astype(np.asarray(current[key]).dtype))


def _quantize_one(path, leaf, x, spec, reason, report, cfg, config, log):
  lf = _as_online(leaf)
  bits, group = _wbits(spec)
  if cfg.rotate == "learned" and lf.rotated and x is not None:
    xs = x / np.asarray(lf.smooth, np.float32) if lf.smooth is not None else x
    r0 = lf.rotation()
    w_in = r0 @ lf.weight()      # the weight in the basis of xs
    # SpinQuant's recipe: with a calibrated weight method (GPTQ) the rotation is learned with
    # full-precision weights (W16) and the method quantizes afterwards.
    lbits = 0 if qrules.is_calibrated(spec[0]) else bits
    r, l0, l1 = learn_rotation(xs, w_in, r0, bits=lbits, group=group, act_bits=cfg.act_bits,
                               act_clip=cfg.act_clip, cfg=cfg.learn, seed=cfg.seed)
    r = np.asarray(r, np.float64)
    # re-orthonormalise (float32 Cayley steps drift ~1e-6) so the fold stays exact
    u, _, vt = np.linalg.svd(r)
    r = u @ vt
    lf = dataclasses.replace(lf, w=jnp.asarray((r.T @ w_in).astype(np.float32)), signs=None,
                             matrix=jnp.asarray(r, jnp.float32))
    log.setdefault(path, {}).update(learned_loss_start=l0, learned_loss_best=l1)
  stats = None
  if x is not None:
    xt = dataclasses.replace(lf, act_bits=0).transform_input(jnp.asarray(x))   # eager: no
    stats = InputStats.from_inputs(xt)                                          # compile/layer
  w = jnp.asarray(lf.w)
  qa = qrules.quantize_planned(path, w, spec, reason, report, stats=stats)
  lf = dataclasses.replace(lf, w=qa, act_bits=cfg.act_bits, act_clip=cfg.act_clip)
  if not lf.rotated and lf.smooth is None and not lf.act_bits:
    return qa
  return lf
