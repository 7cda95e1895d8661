"""LoRA / DoRA adapters as pytrees: init, merge, unmerge, and the unmerged forward through ``dot=``.

An adapter is a nested dict addressed like the params: the weight at ``layers_0/attn/q_proj/kernel``
gets ``{'a': [in, r], 'b': [r, out], 'scale': f32[]}`` at the same path (plus ``'magnitude'``
``[out]`` for DoRA and ``'bias'`` ``[out]`` for PEFT's ``lora_bias``). ``scale`` is an array leaf, so
sweeps over scales vmap and differentiate; training masks select ``a``/``b``/``magnitude`` only
(:func:`trainable_mask`).

Two equal ways to run an adapter:

* merged: ``merge(params, adapter)`` returns params with ``w + scale * a @ b`` (DoRA:
  ``(w + delta) * m / n``); ``unmerge`` inverts it (DoRA from the norms :func:`dora_norms`
  computed before merging);
* unmerged: ``inject(params, adapter)`` replaces each adapted Linear kernel by a :class:`LoraWeight`
  and a model built with ``dot=jaxparams.adapt.dot`` computes ``x @ w + scale * (x @ a) @ b``
  without forming ``a @ b`` (embedding tables, which have no ``dot`` hook, are merged by
  ``inject``: same result).

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxparams as jp
  >>> cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...     num_hidden_layers=1, num_attention_heads=2)
  >>> ids = jnp.arange(6)[None]
  >>> params = jp.models.Llama(cfg).init(jax.random.key(0), ids)['params']
  >>> ad = init(params, '**/attn/[qv]_proj/kernel', rank=4, alpha=8, key=jax.random.key(1),
  ...           init_weights=False)
  >>> sorted(ad['layers_0']['attn']['q_proj']['kernel'])
  ['a', 'b', 'scale']
  >>> merged = jp.models.Llama(cfg).apply({'params': merge(params, ad)}, ids)
  >>> unmerged = jp.models.Llama(cfg, dot=dot).apply({'params': inject(params, ad)}, ids)
  >>> bool(jnp.allclose(merged, unmerged, atol=1e-5))
  True
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxparams import tree as jtree
from jaxparams.adapt import lora as L
from jaxparams.adapt.records import LORA_MERGE, LORA_UNMERGE, LoraMergeConfig

__all__ = ["init", "entries", "merge", "unmerge", "dora_norms", "inject", "LoraWeight", "dot",
           "trainable_mask", "scale_adapter", "ENTRY_KEYS"]

ENTRY_KEYS = ("a", "b", "scale", "magnitude", "bias")


def entries(adapter: Any) -> dict[str, dict[str, Any]]:
  """``{param_path: {'a', 'b', 'scale', ...}}`` for every module of an adapter tree.

  Example:
    >>> entries({'x': {'kernel': {'a': 1, 'b': 2, 'scale': 3}}})
    {'x/kernel': {'a': 1, 'b': 2, 'scale': 3}}
  """
  out: dict[str, dict[str, Any]] = {}
  for path, leaf in jtree.flatten(adapter).items():
    parent, _, key = path.rpartition("/")
    if key not in ENTRY_KEYS:
      raise ValueError(f"adapter leaf {path!r}: last component {key!r} is not one of "
                       f"{list(ENTRY_KEYS)}")
    out.setdefault(parent, {})[key] = leaf
  for path, e in out.items():
    missing = [k for k in ("a", "b", "scale") if k not in e]
    if missing:
      raise ValueError(f"adapter module {path!r} lacks {missing}; each module needs 'a', 'b', "
                       "'scale'")
  return out


def _from_entries(flat_entries: Mapping[str, Mapping[str, Any]]) -> dict:
  return jtree.unflatten({f"{p}/{k}": v for p, e in flat_entries.items() for k, v in e.items()})


def _pattern_value(patterns: Mapping[str, Any] | None, path: str, default: Any) -> Any:
  """First pattern (in dict order) that matches ``path`` (glob/regex as in ``where=``)."""
  for pat, value in (patterns or {}).items():
    if jtree.compile_pattern(pat)(path):
      return value
  return default


def _is_embedding(path: str, w: jax.Array) -> bool:
  return path.rsplit("/", 1)[-1] == "embedding"


def init(params: Any, where: Any, *, rank: int, alpha: float, key: jax.Array,
         use_rslora: bool = False, use_dora: bool = False,
         rank_pattern: Mapping[str, int] | None = None,
         alpha_pattern: Mapping[str, float] | None = None,
         init_weights: bool | str = True, lora_bias: bool = False,
         dtype: Any = jnp.float32) -> dict:
  """A fresh adapter for the 2-D leaves of ``params`` chosen by ``where`` (PEFT's init).

  Args:
    params: the model's params (Flax orientation).
    where: selector of the weights to adapt (``'**/attn/*_proj/kernel'``, rules, ...). Only 2-D
      leaves are allowed.
    rank, alpha: PEFT's ``r`` and ``lora_alpha``.
    key: PRNG key (folded per path, so the result does not depend on the selection order).
    use_rslora: scaling ``alpha / sqrt(r)``.
    use_dora: add DoRA magnitudes ``m = ||w||`` per output unit.
    rank_pattern, alpha_pattern: per-module overrides, ``{where-pattern: value}``; the first
      matching pattern in dict order wins (PEFT's rule).
    init_weights: ``True`` (A Kaiming-uniform, B zeros: the adapter starts as a no-op),
      ``'gaussian'``, or ``False`` (both random, for tests).
    lora_bias: add a trainable ``bias`` of zeros (PEFT's ``lora_bias``).
    dtype: dtype of ``a`` and ``b``.
  """
  flat = jtree.flatten(params)
  paths = jtree.select(flat, where, flat=True)
  out: dict[str, dict[str, Any]] = {}
  for path in paths:
    w = flat[path]
    if getattr(w, "ndim", 0) != 2:
      raise ValueError(f"LoRA target {path!r} has shape {tuple(getattr(w, 'shape', ()))}; only "
                       "2-D weights (Linear kernels, embedding tables) can be adapted")
    r = int(_pattern_value(rank_pattern, path, rank))
    al = float(_pattern_value(alpha_pattern, path, alpha))
    k = jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)
    emb = _is_embedding(path, w)
    a, b = L.init_tensor(k, tuple(w.shape), r, embedding=emb, init=init_weights, dtype=dtype)
    e = {"a": a, "b": b, "scale": jnp.asarray(L.scaling(r, al, use_rslora), jnp.float32)}
    if use_dora:
      if emb:
        raise ValueError(f"DoRA on embedding {path!r} is not supported; adapt Linear kernels only")
      e["magnitude"] = L.dora_norm(w, a, b, e["scale"]).astype(w.dtype)
    if lora_bias:
      e["bias"] = jnp.zeros((w.shape[1],), dtype)
    out[path] = e
  return _from_entries(out)


def _check_target(flat: Mapping[str, Any], path: str, e: Mapping[str, Any]) -> jax.Array:
  if path not in flat:
    raise ValueError(f"adapter module {path!r} has no weight in the params; closest: "
                     f"{[p for p in flat if p.rsplit('/', 2)[0] == path.rsplit('/', 2)[0]][:3]}")
  w = flat[path]
  n_in, r = e["a"].shape
  r2, n_out = e["b"].shape
  if r != r2 or tuple(w.shape) != (n_in, n_out):
    raise ValueError(f"adapter module {path!r}: a {tuple(e['a'].shape)} @ b "
                     f"{tuple(e['b'].shape)} does not match the weight {tuple(w.shape)} ([in, out])")
  return w


def _bias_path(path: str) -> str:
  return path.rsplit("/", 1)[0] + "/bias"


def _apply_bias(flat: dict, path: str, e: Mapping[str, Any], weight: Any, sign: float) -> None:
  if "bias" not in e:
    return
  bp = _bias_path(path)
  if bp not in flat:
    raise ValueError(f"adapter module {path!r} has a lora bias but the layer has no bias {bp!r}")
  s = jnp.asarray(e["scale"], jnp.float32) * weight
  flat[bp] = (flat[bp].astype(jnp.float32) + sign * s * e["bias"].astype(jnp.float32)
              ).astype(flat[bp].dtype)


def _run(record, path: str, w, models, scale) -> jax.Array:
  """One record call on one tensor (its checks run; value checks read unless traced)."""
  return record(w, tuple(models), config=LoraMergeConfig(scale=scale), path=path)


def merge(params: Any, adapter: Any, *, weight: jax.Array | float = 1.0) -> Any:
  """Params with the adapter merged in: ``w + weight * scale * a @ b`` (DoRA: rescaled columns).

  Runs the ``lora_merge`` record (:mod:`jaxparams.adapt.records`) per module. ``weight``
  multiplies every module's scale (a traced array is fine: vmap a sweep over it). DoRA modules use
  ``weight`` on the delta only (the magnitude is the trained one).
  """
  flat = dict(jtree.flatten(params))
  for path, e in entries(adapter).items():
    w = _check_target(flat, path, e)
    s = jnp.asarray(e["scale"], jnp.float32) * weight
    models = (e["a"], e["b"]) + ((e["magnitude"],) if "magnitude" in e else ())
    flat[path] = _run(LORA_MERGE, path, w, models, s)
    _apply_bias(flat, path, e, weight, 1.0)
  return jtree.unflatten(flat, like=params)


def dora_norms(params: Any, adapter: Any, *, weight: jax.Array | float = 1.0) -> dict[str, jax.Array]:
  """``{path: n}``: DoRA's pre-merge norms (keep them to :func:`unmerge` a merged DoRA)."""
  flat = jtree.flatten(params)
  return {p: L.dora_norm(flat[p], e["a"], e["b"], jnp.asarray(e["scale"], jnp.float32) * weight)
          for p, e in entries(adapter).items() if "magnitude" in e}


def unmerge(merged: Any, adapter: Any, *, weight: jax.Array | float = 1.0,
            norms: Mapping[str, jax.Array] | None = None) -> Any:
  """Inverse of :func:`merge` (DoRA needs ``norms`` from :func:`dora_norms`).

  In float32 the round trip is exact to float32 rounding (tested <= 1e-6). With bf16/fp16
  weights, :func:`merge` and :func:`unmerge` each round once to the weight's dtype, so the round
  trip is off by up to about one step of that dtype (bf16: ``2**-8`` relative); keep a float32
  master copy of the base (and merge into it) when the exact base is needed back.
  """
  flat = dict(jtree.flatten(merged))
  for path, e in entries(adapter).items():
    w = _check_target(flat, path, e)
    s = jnp.asarray(e["scale"], jnp.float32) * weight
    models = (e["a"], e["b"])
    if "magnitude" in e:
      if norms is None or path not in norms:
        raise ValueError(f"unmerge: DoRA module {path!r} needs its pre-merge norm; pass "
                         "norms=dora_norms(params, adapter) computed before merging")
      models += (e["magnitude"], norms[path])
    flat[path] = _run(LORA_UNMERGE, path, w, models, s)
    _apply_bias(flat, path, e, weight, -1.0)
  return jtree.unflatten(flat, like=merged)


def scale_adapter(adapter: Any, weight: jax.Array | float) -> Any:
  """The adapter with every ``scale`` multiplied by ``weight``."""
  return jax.tree_util.tree_map_with_path(
      lambda kp, x: x * weight if jtree.path_str(kp).endswith("/scale") else x, adapter)


def trainable_mask(adapter: Any) -> Any:
  """Boolean tree: True for ``a``, ``b``, ``magnitude`` and ``bias``; False for ``scale``.

  Example:
    >>> trainable_mask({'k': {'a': 0., 'b': 0., 'scale': 1.}})
    {'k': {'a': True, 'b': True, 'scale': False}}
  """
  return jax.tree_util.tree_map_with_path(
      lambda kp, x: not jtree.path_str(kp).endswith("/scale"), adapter)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoraWeight:
  """A Linear kernel with an unmerged LoRA/DoRA: what :func:`dot` consumes.

  Attributes:
    w: base kernel ``[in, out]`` (an array, or anything ``base_dot`` takes, e.g. a ``QArray``).
    a, b: ``[in, r]``, ``[r, out]``.
    scale: scalar.
    magnitude: DoRA magnitude ``[out]`` or None.
    bias: PEFT ``lora_bias`` ``[out]`` or None.
  """
  w: Any
  a: jax.Array
  b: jax.Array
  scale: jax.Array
  magnitude: jax.Array | None = None
  bias: jax.Array | None = None

  @property
  def shape(self) -> tuple[int, int]:
    return (self.a.shape[0], self.b.shape[1])


def _plain_dot(x: jax.Array, w: Any) -> jax.Array:
  return jnp.matmul(x, jnp.asarray(w).astype(x.dtype))


def dot(x: jax.Array, w: Any, *, base_dot: Callable | None = None) -> jax.Array:
  """``x @ w`` where ``w`` may be a :class:`LoraWeight`: ``x @ W + s * ((x @ a) @ b + bias)``.

  DoRA: ``(m / n) * (x @ W + s * (x @ a) @ b)`` with ``n = ||W + s a b||`` per output unit,
  treated as a constant (``stop_gradient``, as PEFT and the DoRA paper do). ``base_dot`` runs the
  base matmul (e.g. ``jaxparams.quant.dot`` for a quantized base: QLoRA); default ``x @ W``.

  Example:
    >>> import jax.numpy as jnp
    >>> lw = LoraWeight(jnp.eye(2), jnp.ones((2, 1)), jnp.ones((1, 2)), jnp.float32(0.5))
    >>> dot(jnp.array([[1.0, 2.0]]), lw).tolist()
    [[2.5, 3.5]]
  """
  base_dot = base_dot or _plain_dot
  if not isinstance(w, LoraWeight):
    return base_dot(x, w)
  y = base_dot(x, w.w)
  s = jnp.asarray(w.scale).astype(x.dtype)
  lo = (x @ w.a.astype(x.dtype)) @ w.b.astype(x.dtype)
  if w.bias is not None:
    lo = lo + w.bias.astype(x.dtype)
  if w.magnitude is None:
    return y + s * lo
  wf = w.w if not hasattr(w.w, "dequantize") else w.w.dequantize(jnp.float32)
  n = jax.lax.stop_gradient(L.dora_norm(jnp.asarray(wf), w.a, w.b, w.scale))
  f = (w.magnitude.astype(jnp.float32) / n).astype(x.dtype)
  return f * (y + s * lo)


def inject(params: Any, adapter: Any, *, weight: jax.Array | float = 1.0) -> Any:
  """Params whose adapted Linear kernels are :class:`LoraWeight` (run with ``dot=adapt.dot``).

  Embedding tables (leaf name ``embedding``) have no ``dot`` hook, so their LoRA is merged here.
  """
  flat = dict(jtree.flatten(params))
  emb = {}
  for path, e in entries(adapter).items():
    w = _check_target(flat, path, e)
    if _is_embedding(path, w):
      emb[path] = e
      continue
    flat[path] = LoraWeight(w, e["a"], e["b"], jnp.asarray(e["scale"], jnp.float32) * weight,
                            e.get("magnitude"), e.get("bias"))
  out = jtree.unflatten(flat, like=params)
  if emb:
    out = merge(out, _from_entries(emb), weight=weight)
  return out
