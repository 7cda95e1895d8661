"""μP (Maximal Update Parametrization) for param trees and optax.

Yang et al., "Tensor Programs V" (arXiv 2203.03466); reference microsoft/mup.
Hyperparameters tuned on a narrow *base* model transfer to wide ones when
init scales, the output multiplier and per-parameter learning rates follow the
width multipliers ``m = dim / base_dim`` of each parameter's infinite
(width-dependent) dimensions.

Convention (flax): a kernel's fan-in is its leading axis, fan-out the
product of the others; a 1-D leaf (bias, norm scale) has only a fan-out. A
dimension is *infinite* when it differs between the base shapes and the
``delta`` shapes (default: the target shapes). Classes:

=========  =============================  ============  ===========  ============
kind       which leaves                   init scale*   Adam LR ×    SGD LR ×
=========  =============================  ============  ===========  ============
matrix     fan-in and fan-out infinite    1 (m_in^-½)   1 / m_in     m_out / m_in
vector     only fan-out infinite          1             1            m_out
           (biases, norms, embeddings)
readout    only fan-in infinite           √m_in         1            m_in
           (output layer; forward × 1/m_in, see `output_multiplier`)
scalar     no infinite dim                1             1            1
=========  =============================  ============  ===========  ============

(*) relative to an init whose std is ∝ 1/√fan_in (flax's lecun_normal,
``base_init='fan_in'``); for a constant-std init (e.g. N(0, 0.02²),
``base_init='constant'``) matrices get m_in^-½ and the readout 1 (as in
``mup.init``). The readout forward is ``output_mult · x W / m_in``; with
the √m_in weight rescale the effective readout init is ∝ 1/fan_in, as μP
requires (this is what ``mup.set_base_shapes(rescale_params=True)`` does for
``MuReadout``). Zero-initialising the readout is also fine.

Not covered: attention's 1/d (instead of 1/√d) score scaling is a model
change; apply it in the model (``attn_scale = 1/head_dim``) when using μP.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> base = {'hidden': {'kernel': jnp.zeros((8, 8))}, 'out': {'kernel': jnp.zeros((8, 2))}}
  >>> wide = {'hidden': {'kernel': jnp.zeros((32, 32))}, 'out': {'kernel': jnp.zeros((32, 2))}}
  >>> info = infer(make_base_shapes(base), wide)
  >>> info['hidden/kernel'].kind, info['out/kernel'].kind, output_multiplier(info)
  ('matrix', 'readout', 0.25)
  >>> lr_multipliers(info, 'adam')['hidden/kernel']
  0.25
  >>> opt = mup_adam(1e-3, make_base_shapes(base), wide)
  >>> state = opt.init(wide)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxparams import tree as jtree

__all__ = [
    "MuInfo", "coord_check", "infer", "init_scales", "loglog_slope", "lr_multipliers",
    "make_base_shapes", "mup_adam", "mup_adamw", "mup_sgd", "output_multiplier", "rescale_init",
    "scale_by_tree",
]


@dataclasses.dataclass(frozen=True)
class MuInfo:
  """μP class of one leaf.

  Attributes:
    kind: ``'matrix' | 'vector' | 'readout' | 'scalar'``.
    fan_in_mult: fan_in / base fan_in (1 when the fan-in is finite or absent).
    fan_out_mult: fan_out / base fan_out.
  """
  kind: str
  fan_in_mult: float
  fan_out_mult: float


def make_base_shapes(params: Any) -> dict[str, tuple[int, ...]]:
  """``{path: shape}`` of a (base or delta) model; works on arrays or ShapeDtypeStructs.

  Save it with json to reuse (mup's ``make_base_shapes`` file).
  """
  return {p: tuple(int(d) for d in np.shape(x)) for p, x in jtree.flatten(params).items()}


def _shapes(tree_or_shapes: Any) -> dict[str, tuple[int, ...]]:
  if isinstance(tree_or_shapes, Mapping) and tree_or_shapes and all(
      isinstance(v, tuple) for v in tree_or_shapes.values()):
    return dict(tree_or_shapes)
  return make_base_shapes(tree_or_shapes)


def _fans(shape: tuple[int, ...]) -> tuple[int | None, int]:
  if len(shape) == 0:
    return None, 1
  if len(shape) == 1:
    return None, shape[0]
  return shape[0], int(np.prod(shape[1:]))


def infer(base_shapes: Any, shapes: Any, *, delta_shapes: Any = None) -> dict[str, MuInfo]:
  """Classify every leaf of the target model (table in the module doc).

  Args:
    base_shapes: `make_base_shapes` of the base model (or the model itself).
    shapes: target model params or shapes.
    delta_shapes: optional second model that differs from the base exactly
      in the infinite dims (default: the target).

  Returns:
    ``{path: MuInfo}``.

  Raises:
    ValueError: paths or ranks that differ between base and target.
  """
  base, target = _shapes(base_shapes), _shapes(shapes)
  delta = _shapes(delta_shapes) if delta_shapes is not None else target
  for name, other in (("target", target), ("delta", delta)):
    if set(other) != set(base):
      missing, extra = sorted(set(base) - set(other)), sorted(set(other) - set(base))
      raise ValueError(f"mup.infer: {name} paths differ from the base shapes: missing {missing[:5]}, "
                       f"extra {extra[:5]}")
  out = {}
  for path, b in base.items():
    t, d = target[path], delta[path]
    if len(t) != len(b) or len(d) != len(b):
      raise ValueError(f"mup.infer: {path} has rank {len(t)} (delta {len(d)}) but base rank {len(b)}")
    b_in, b_out = _fans(b)
    t_in, t_out = _fans(t)
    d_in, d_out = _fans(d)
    inf_in = b_in is not None and b_in != d_in
    inf_out = b_out != d_out
    m_in = t_in / b_in if inf_in else 1.0
    m_out = t_out / b_out if inf_out else 1.0
    kind = {(True, True): "matrix", (False, True): "vector", (True, False): "readout",
            (False, False): "scalar"}[(inf_in, inf_out)]
    out[path] = MuInfo(kind, float(m_in), float(m_out))
  return out


def init_scales(info: Mapping[str, MuInfo], base_init: str = "fan_in") -> dict[str, float]:
  """Multipliers for an SP init tuned on the base model (see module table)."""
  if base_init not in ("fan_in", "constant"):
    raise ValueError(f"init_scales: base_init must be 'fan_in' or 'constant', found {base_init!r}")
  out = {}
  for path, i in info.items():
    if i.kind == "matrix":
      out[path] = 1.0 if base_init == "fan_in" else i.fan_in_mult ** -0.5
    elif i.kind == "readout":
      out[path] = math.sqrt(i.fan_in_mult) if base_init == "fan_in" else 1.0
    else:
      out[path] = 1.0
  return out


def rescale_init(params: Any, base_shapes: Any, *, base_init: str = "fan_in",
                 delta_shapes: Any = None) -> Any:
  """Apply `init_scales` to freshly initialised params (mup's ``rescale_params``)."""
  scales = init_scales(infer(base_shapes, params, delta_shapes=delta_shapes), base_init)
  return jtree.map_with_path(lambda p, x: x * jnp.asarray(scales[p], x.dtype), params)


def output_multiplier(info: Mapping[str, MuInfo], readout: str | None = None) -> float:
  """The readout forward multiplier ``1 / m_in`` (multiply by your ``output_mult``).

  Args:
    info: `infer` output.
    readout: the readout kernel path (default: the single ``readout`` leaf).

  At the base width (no dimension differs from the base, so no leaf can be told apart as the
  readout without ``delta_shapes``) every fan-in multiplier is 1, and so is this one.

  Raises:
    ValueError: if there is no readout leaf while some width differs from the base, or several
      and ``readout`` is None.
  """
  if readout is None:
    cands = [p for p, i in info.items() if i.kind == "readout"]
    if not cands and all(i.fan_in_mult == 1.0 for i in info.values()):
      return 1.0
    if len(cands) != 1:
      raise ValueError(f"output_multiplier: expected one readout leaf (fan-in infinite, fan-out "
                       f"finite), found {cands}; pass readout=")
    readout = cands[0]
  if readout not in info:
    raise ValueError(f"output_multiplier: {readout!r} not in params")
  return 1.0 / info[readout].fan_in_mult


def lr_multipliers(info: Mapping[str, MuInfo], optimizer: str = "adam") -> dict[str, float]:
  """Per-leaf learning-rate multipliers for ``'adam'`` (also AdamW, Lion-like) or ``'sgd'``."""
  if optimizer not in ("adam", "sgd"):
    raise ValueError(f"lr_multipliers: optimizer must be 'adam' or 'sgd', found {optimizer!r}")
  out = {}
  for path, i in info.items():
    if optimizer == "adam":
      out[path] = 1.0 / i.fan_in_mult if i.kind == "matrix" else 1.0
    else:
      out[path] = {"matrix": i.fan_out_mult / i.fan_in_mult, "vector": i.fan_out_mult,
                   "readout": i.fan_in_mult, "scalar": 1.0}[i.kind]
  return out


class _Empty(NamedTuple):
  pass


def scale_by_tree(multipliers: Mapping[str, float]) -> optax.GradientTransformation:
  """Multiply each update leaf by ``multipliers[path]`` (paths of `jaxparams.tree.flatten`)."""

  def init_fn(params):
    del params
    return _Empty()

  def update_fn(updates, state, params=None):
    del params
    missing = [p for p in jtree.flatten(updates) if p not in multipliers]
    if missing:
      raise ValueError(f"scale_by_tree: no multiplier for {missing[:5]}")
    return jtree.map_with_path(lambda p, u: u * jnp.asarray(multipliers[p], u.dtype), updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def mup_adam(learning_rate: float | optax.Schedule, base_shapes: Any, shapes: Any, *,
             delta_shapes: Any = None, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
             ) -> optax.GradientTransformation:
  """Adam with μP per-parameter learning rates (``MuAdam``).

  Args:
    learning_rate: the base model's tuned LR (or schedule).
    base_shapes: base model shapes (`make_base_shapes`) or params.
    shapes: the target model's params or shapes.
    delta_shapes: optional delta model (see `infer`).
  """
  mult = lr_multipliers(infer(base_shapes, shapes, delta_shapes=delta_shapes), "adam")
  return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), scale_by_tree(mult),
                     optax.scale_by_learning_rate(learning_rate))


def mup_adamw(learning_rate: float | optax.Schedule, base_shapes: Any, shapes: Any, *,
              weight_decay: float = 1e-4, delta_shapes: Any = None, b1: float = 0.9,
              b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """AdamW with μP LRs; weight decay is coupled to the scaled LR (``MuAdamW`` default)."""
  mult = lr_multipliers(infer(base_shapes, shapes, delta_shapes=delta_shapes), "adam")
  return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.add_decayed_weights(weight_decay), scale_by_tree(mult),
                     optax.scale_by_learning_rate(learning_rate))


def mup_sgd(learning_rate: float | optax.Schedule, base_shapes: Any, shapes: Any, *,
            delta_shapes: Any = None, momentum: float | None = None) -> optax.GradientTransformation:
  """SGD (optionally with momentum) with μP per-parameter learning rates (``MuSGD``)."""
  mult = lr_multipliers(infer(base_shapes, shapes, delta_shapes=delta_shapes), "sgd")
  parts = [optax.trace(decay=momentum)] if momentum else []
  return optax.chain(*parts, scale_by_tree(mult), optax.scale_by_learning_rate(learning_rate))


def coord_check(widths: Sequence[int], init_fn: Callable[[int, jax.Array], Any],
                apply_fn: Callable[[Any, jax.Array, int], tuple[jax.Array, dict[str, jax.Array]]],
                optimizer_fn: Callable[[int, Any], optax.GradientTransformation],
                batches: Sequence[tuple[jax.Array, jax.Array]], *, key: jax.Array | None = None,
                loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                seeds: int = 1) -> dict[str, np.ndarray]:
  """Coordinate check: mean |activation| of each recorded layer after training, per width.

  Trains each width for ``len(batches)`` steps and records, on the last batch,
  the mean absolute value of every activation ``apply_fn`` returns. Under μP
  these curves are flat in width; under the standard parametrisation with a
  fixed LR they grow (mup's ``get_coord_data``).

  Args:
    widths: model widths.
    init_fn: ``(width, key) -> params`` (traced inside the compiled run).
    apply_fn: ``(params, x, width) -> (output, {name: activation})``.
    optimizer_fn: ``(width, params) -> optax transform`` (params are ShapeDtypeStructs).
    batches: ``[(x, y), ...]`` (all of the same shapes; run as one ``lax.scan``).
    key: PRNG key (default ``PRNGKey(0)``).
    loss: ``(output, y) -> scalar`` (default mean squared error).
    seeds: average over this many init seeds.

  Returns:
    ``{name: float64[len(widths)]}`` (also ``'output'``).
  """
  loss = loss or (lambda out, y: jnp.mean(jnp.square(out - y)))
  xs = jnp.stack([jnp.asarray(x) for x, _ in batches])
  ys = jnp.stack([jnp.asarray(y) for _, y in batches])
  key = jax.random.PRNGKey(0) if key is None else key
  result: dict[str, list[float]] = {}
  for wi, width in enumerate(widths):
    abstract = jax.eval_shape(lambda k, width=width: init_fn(width, k), key)
    opt = optimizer_fn(width, abstract)

    @jax.jit
    def run(key, width=width, opt=opt):
      """Init, all training steps (a scan) and the final forward: one compiled function."""
      params = init_fn(width, key)

      def step(carry, batch):
        params, state = carry
        x, y = batch
        grads = jax.grad(lambda p: loss(apply_fn(p, x, width)[0], y))(params)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

      (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), (xs, ys))
      out, acts = apply_fn(params, xs[-1], width)
      return {name: jnp.mean(jnp.abs(a)) for name, a in {"output": out, **acts}.items()}

    acc: dict[str, float] = {}
    for s in range(seeds):
      stats = run(jax.random.fold_in(key, s))
      for name, v in stats.items():
        acc[name] = acc.get(name, 0.0) + float(v) / seeds
    for name, v in acc.items():
      result.setdefault(name, [0.0] * len(widths))[wi] = v
  return {k: np.asarray(v) for k, v in result.items()}


def loglog_slope(widths: Sequence[float], values: Sequence[float]) -> float:
  """Least-squares slope of log(values) against log(widths).

  Example:
    >>> round(loglog_slope([1, 2, 4], [3, 6, 12]), 6)
    1.0
  """
  x, y = np.log(np.asarray(widths, np.float64)), np.log(np.asarray(values, np.float64))
  return float(np.polyfit(x, y, 1)[0])
