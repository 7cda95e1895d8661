"""Calibration: capture what every Linear layer sees, and quantize a model layer by layer.

Capture uses flax method interception (``nn.intercept_methods``): every
``__call__`` of a module owning a 2-D ``kernel`` parameter (the reference
models' ``Linear``, flax's ``nn.Dense``) records its input ``x[..., K]`` under
the kernel's path (``'layers_0/attn/query/kernel'``). Rows that are padding
(``attention_mask == 0``) are dropped when the input is token-shaped.

Statistics per layer are a :class:`LayerStats`: the mean outer product
``H = X^T X / n`` (GPTQ's Hessian up to the factor 2, which does not change
GPTQ's result because dampening is relative) and the mean ``|x|`` per input
channel (AWQ's activation scale); :meth:`LayerStats.to_act_stats` gives the
methods' :class:`~jaxparams.quant.stats.ActStats`. :func:`collect_stats` computes
them inside one jit-compiled forward pass.

:func:`quantize_model` runs GPTQ-style sequential quantization at block
granularity: blocks (``layers_{i}``) are processed in execution order; the
inputs of block ``i`` are captured with blocks ``< i`` already quantized (their
dequantized weights), so each block sees the errors of the ones before it.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxparams as jp, jaxparams.models
  >>> cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...     num_hidden_layers=1, num_attention_heads=2)
  >>> model = jp.models.Llama(cfg)
  >>> ids = jnp.ones((2, 5), jnp.int32)
  >>> params = model.init(jax.random.key(0), ids)['params']
  >>> xs = capture_inputs(model, params, ids)
  >>> xs['layers_0/mlp/down_proj/kernel'].shape
  (10, 32)
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxparams import tree as jtree
from jaxparams.quant import rules as qrules
from jaxparams.quant.qarray import QArray

__all__ = ["LayerStats", "capture_inputs", "collect_stats", "linear_order", "quantize_model",
           "text_batches", "block_of"]


@jax.jit
def _gram(x: jax.Array):
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  return (jnp.matmul(x.T, x, precision=jax.lax.Precision.HIGHEST), jnp.sum(jnp.abs(x), axis=0),
          jnp.all(jnp.isfinite(x)))


@dataclasses.dataclass
class LayerStats:
  """Input statistics of one Linear layer ``y = x @ W`` with ``W[K, N]``.

  Attributes:
    hessian_sum: ``sum_rows x x^T`` ``[K, K]`` float32 (use :meth:`hessian_matrix`).
    abs_sum: ``sum_rows |x|`` ``[K]`` float32.
    n: number of rows seen.

  Example:
    >>> import numpy as np
    >>> s = LayerStats.from_inputs(np.ones((3, 4, 2), np.float32))
    >>> s.n, s.hessian_matrix().tolist()
    (12, [[1.0, 1.0], [1.0, 1.0]])
  """
  hessian_sum: Any = None
  abs_sum: Any = None
  n: int = 0

  @classmethod
  def from_inputs(cls, x: Any, *, name: str = "") -> "LayerStats":
    """Statistics of raw inputs ``x[..., K]`` (all leading axes are rows)."""
    s = cls()
    s.update(x, name=name)
    return s

  def update(self, x: Any, *, name: str = "") -> None:
    """Adds rows ``x[..., K]``.

    Raises:
      ValueError: not floating, fewer than 2 dims, a K different from earlier rows, NaN/inf.
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
      raise ValueError(f"calibration inputs for {name!r} must be [..., K] with at least one row "
                       f"axis, got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"calibration inputs for {name!r} must be floating, got {x.dtype}")
    if self.hessian_sum is not None and self.hessian_sum.shape[0] != x.shape[-1]:
      raise ValueError(f"calibration inputs for {name!r} have {x.shape[-1]} features, earlier "
                       f"batches had {self.hessian_sum.shape[0]}")
    h, a, finite = _gram(x)
    if not bool(finite):
      raise ValueError(f"calibration inputs for {name!r} contain NaN/inf")
    self.hessian_sum = h if self.hessian_sum is None else self.hessian_sum + h
    self.abs_sum = a if self.abs_sum is None else self.abs_sum + a
    self.n += int(np.prod(x.shape[:-1]))

  @property
  def k(self) -> int | None:
    return None if self.hessian_sum is None else int(self.hessian_sum.shape[0])

  def check(self, k: int, *, name: str = "") -> None:
    """Raises ValueError unless these statistics fit a weight with ``K = k`` inputs."""
    if self.hessian_sum is None or self.n == 0:
      raise ValueError(f"calibration for {name!r} is empty (no rows)")
    kk = self.k
    if tuple(self.hessian_sum.shape) != (kk, kk):
      raise ValueError(f"calibration Hessian for {name!r} must be square [K, K], got "
                       f"{tuple(self.hessian_sum.shape)}")
    if kk != k:
      raise ValueError(f"calibration for {name!r} has K={kk} input features, but the weight has "
                       f"K={k} (inputs must be [..., {k}])")

  def hessian_matrix(self) -> jax.Array:
    """``H = X^T X / n`` ``[K, K]`` float32."""
    return self.hessian_sum / max(self.n, 1)

  def mean_abs(self) -> jax.Array:
    """Mean ``|x|`` per input channel ``[K]``."""
    return self.abs_sum / max(self.n, 1)

  def to_act_stats(self):
    """The methods' :class:`~jaxparams.quant.stats.ActStats` (``H = 2 X^T X / n``)."""
    from jaxparams.quant.stats import ActStats  # pylint: disable=g-import-not-at-top
    return ActStats(hessian=2.0 * self.hessian_matrix(), abs_mean=self.mean_abs(),
                    count=jnp.float32(self.n))


# ----------------------------------------------------------------------------- capture
def _is_linear(module: nn.Module, args: tuple) -> str | None:
  """The kernel path when ``module`` is a Linear-like layer called on ``args``, else None."""
  try:
    if not module.has_variable("params", "kernel"):
      return None
    kernel = module.get_variable("params", "kernel")
  except Exception:  # pylint: disable=broad-except
    return None
  shape = kernel.shape if not isinstance(kernel, QArray) else kernel.shape
  if len(shape) != 2 or not args or not hasattr(args[0], "shape"):
    return None
  if args[0].shape[-1] != shape[0]:
    return None
  return "/".join(module.scope.path) + "/kernel"


def _variables(params: Any) -> dict:
  if isinstance(params, Mapping) and set(params) == {"params"}:
    return dict(params)
  return {"params": params}


def _rows(x: jax.Array, token_mask: np.ndarray | None) -> jax.Array:
  if token_mask is not None and tuple(x.shape[:-1]) == tuple(token_mask.shape):
    return x[np.asarray(token_mask, bool)]
  return x.reshape(-1, x.shape[-1])


def capture_inputs(module: nn.Module, params: Any, *args: Any, paths: Iterable[str] | None = None,
                   token_mask: Any = None, **kwargs: Any) -> dict[str, jax.Array]:
  """Runs the model once (jit-compiled) and returns the input rows ``[rows, K]`` of each Linear.

  Args:
    module: a flax linen module (``Llama``, ``Bert``, anything with Dense-like layers).
    params: its ``'params'`` collection (or ``{'params': ...}``).
    *args: positional call arguments (e.g. ``input_ids``).
    paths: kernel paths to capture (default: all); layers after the last one wanted
      are not computed.
    token_mask: ``[batch, seq]`` mask of real tokens; by default ``kwargs['attention_mask']``.
      Inputs shaped ``[batch, seq, K]`` keep only the masked rows.
    **kwargs: keyword call arguments (e.g. ``attention_mask``).

  Returns:
    ``{kernel_path: rows[n, K]}`` in execution order (a layer called twice gets its
    rows concatenated).
  """
  want = None if paths is None else frozenset(paths)
  if token_mask is None:
    token_mask = kwargs.get("attention_mask")
  mask = None if token_mask is None else np.asarray(token_mask, bool)
  a = tuple(jnp.asarray(x) for x in args)
  kw = {k: jnp.asarray(v) for k, v in kwargs.items() if v is not None}
  order = [p for p in linear_order(module, params, (a, kw)) if want is None or p in want]

  def run(params, a, kw):
    got: dict[str, list] = {}

    def interceptor(next_fun, a_, kw_, context):
      if context.method_name == "__call__":
        path = _is_linear(context.module, a_)
        if path is not None and (want is None or path in want):
          got.setdefault(path, []).append(a_[0])
      return next_fun(*a_, **kw_)

    with nn.intercept_methods(interceptor):
      module.apply(_variables(params), *a, **kw)
    return got

  out = jax.jit(run)(params, a, kw)
  return {p: jnp.concatenate([_rows(x, mask) for x in out[p]]) for p in order if p in out}


def _as_call(batch: Any, i: int) -> tuple[tuple, dict]:
  if isinstance(batch, Mapping):
    kw = dict(batch)
    ids = kw.get("input_ids")
    if ids is not None:
      ids = np.asarray(ids)
      if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"calibration batch {i}: input_ids must be int [batch, seq], got "
                         f"{ids.dtype} {ids.shape}")
      m = kw.get("attention_mask")
      if m is not None and np.shape(m) != ids.shape:
        raise ValueError(f"calibration batch {i}: attention_mask shape {np.shape(m)} != "
                         f"input_ids shape {ids.shape}")
    return (), kw
  if isinstance(batch, tuple):
    return batch, {}
  return (batch,), {}


def _check_batches(batches: Any) -> list:
  if isinstance(batches, (Mapping, np.ndarray, jax.Array)):
    batches = [batches]
  batches = list(batches)
  if not batches:
    raise ValueError("calibration: no batches given")
  return batches


def _stats_runner(module: nn.Module, paths: Iterable[str] | None = None) -> Callable:
  """A jitted ``f(params, args, kwargs, mask) -> {path: (X^T X, sum|x|, rows)}`` over the
  Linear layers in ``paths`` (all when None); padding rows (``mask == 0``) contribute
  nothing. Layers after the last requested one are dead code that XLA removes, and
  layers sharing one input (q/k/v) share one ``X^T X``."""
  want = None if paths is None else frozenset(paths)

  def run(params, args, kwargs, mask):
    acc: dict[str, tuple] = {}
    by_input: dict[int, tuple] = {}

    def interceptor(next_fun, a, kw, context):
      if context.method_name == "__call__":
        path = _is_linear(context.module, a)
        if path is not None and (want is None or path in want):
          key = id(a[0])
          if key in by_input:
            new = by_input[key][1]
          else:
            x = a[0].astype(jnp.float32)
            k = x.shape[-1]
            if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
              m = mask.astype(jnp.float32).reshape(-1, 1)
            else:
              m = jnp.ones((int(np.prod(x.shape[:-1])), 1), jnp.float32)
            x = x.reshape(-1, k) * m
            h = jnp.matmul(x.T, x, precision=jax.lax.Precision.HIGHEST)
            new = (h, jnp.sum(jnp.abs(x), axis=0), jnp.sum(m))
            by_input[key] = (a[0], new)  # keeps a[0] alive so its id stays unique
          old = acc.get(path)
          acc[path] = new if old is None else tuple(o + n for o, n in zip(old, new))
      return next_fun(*a, **kw)

    with nn.intercept_methods(interceptor):
      module.apply(_variables(params), *args, **kwargs)
    return acc

  return jax.jit(run)


def collect_stats(module: nn.Module, params: Any, batches: Any, *,
                  paths: Iterable[str] | None = None, runner: Callable | None = None
                  ) -> dict[str, LayerStats]:
  """Accumulates :class:`LayerStats` of every (or the given) Linear over calibration batches.

  The forward pass is jit-compiled once per batch shape (pad calibration batches to
  one length, as :func:`text_batches` does, to compile once).

  Args:
    module: flax module.
    params: its params.
    batches: a batch or a list of batches; a batch is a dict of call keyword arguments
      (``{'input_ids': ..., 'attention_mask': ...}``; ``attention_mask`` also masks
      padding rows out of the statistics), a tuple of positional arguments, or an array.
    paths: kernel paths to return (default all).
    runner: a reusable compiled runner from a previous call (internal).

  Raises:
    ValueError: a batch of the wrong shape or dtype; NaN/inf in the captured inputs.
  """
  run = runner or _stats_runner(module, paths)
  want = None if paths is None else set(paths)
  totals: dict[str, list] = {}
  for i, batch in enumerate(_check_batches(batches)):
    a, kw = _as_call(batch, i)
    mask = kw.get("attention_mask")
    mask = None if mask is None else jnp.asarray(mask)
    out = run(params, tuple(jnp.asarray(x) for x in a),
              {k: jnp.asarray(v) for k, v in kw.items() if v is not None}, mask)
    for path, parts in out.items():
      if want is not None and path not in want:
        continue
      if path in totals:
        totals[path] = [t + p for t, p in zip(totals[path], parts)]
      else:
        totals[path] = list(parts)
  stats = {}
  for path, (h, a, n) in totals.items():
    if not bool(jnp.all(jnp.isfinite(h))):
      raise ValueError(f"calibration inputs of {path!r} contain NaN/inf (Hessian not finite)")
    stats[path] = LayerStats(hessian_sum=h, abs_sum=a, n=int(n))
  return stats


def linear_order(module: nn.Module, params: Any, batch: Any) -> list[str]:
  """Kernel paths of the Linear layers in the order the forward pass calls them (traced
  abstractly with ``jax.eval_shape``: nothing is computed)."""
  order: list[str] = []

  def interceptor(next_fun, a, kw, context):
    if context.method_name == "__call__":
      path = _is_linear(context.module, a)
      if path is not None and path not in order:
        order.append(path)
    return next_fun(*a, **kw)

  a, kw = batch if (isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], dict)
                    ) else _as_call(batch, 0)

  def f(p, a, kw):
    with nn.intercept_methods(interceptor):
      return module.apply(_variables(p), *a, **kw)

  jax.eval_shape(f, params, tuple(jnp.asarray(x) for x in a),
                 {k: jnp.asarray(v) for k, v in kw.items() if v is not None})
  return order


_BLOCK = re.compile(r"^(.*?(?:layers?|blocks?|h)[_./]?\d+)/")


def block_of(path: str) -> str:
  """The block a kernel belongs to (``'layers_3/attn/q_proj/kernel' -> 'layers_3'``); a path
  outside numbered blocks is its own block.

  Example:
    >>> block_of('layers_3/attn/q_proj/kernel'), block_of('pooler/kernel')
    ('layers_3', 'pooler/kernel')
  """
  m = _BLOCK.match(path)
  return m.group(1) if m else path


# ----------------------------------------------------------------------------- sequential
def quantize_model(module: nn.Module, params: Any, rules: Any, batches: Any = None, *,
                   keep: Sequence[Any] = qrules.DEFAULT_KEEP, sequential: bool = True,
                   progress: Callable[[str, int, int], None] | None = None
                   ) -> tuple[Any, qrules.QuantReport]:
  """Quantizes a model's params by rules, calibrating each layer on ``batches``.

  With ``sequential=True`` (GPTQ's procedure) blocks are quantized in execution
  order and the inputs of each block are captured from the partially quantized
  model; with ``sequential=False`` every layer is calibrated on the full-precision
  model. Methods that need no calibration still get an output-error figure in the
  report when batches are given.

  Args:
    module: a flax module (``Llama``, ``Bert``, ...).
    params: its ``'params'`` collection.
    rules: as for :func:`jaxparams.quant.quantize_tree`.
    batches: calibration batches (see :func:`collect_stats`); required when a rule
      uses a calibrated method.
    keep: full-precision defaults (see :data:`jaxparams.quant.rules.DEFAULT_KEEP`).
    sequential: feed each block the outputs of the already quantized blocks.
    progress: called as ``progress(path, index, total)`` before each layer.

  Returns:
    ``(qparams, report)`` like :func:`jaxparams.quant.quantize_tree`.

  Raises:
    ValueError: calibrated method without batches; a batch of the wrong shape; a
      layer that never ran on the calibration batches; every quantize_tree error.
  """
  flat = jtree.flatten(params)
  plan, reasons = qrules.plan_tree(flat, rules, keep=keep)
  todo = [p for p, s in plan.items() if s is not None]
  calibrated = [p for p in todo if _needs_calibration(plan[p][0])]
  if batches is None:
    if calibrated:
      raise ValueError(f"quantize_model: method {plan[calibrated[0]][0]!r} (for "
                       f"{calibrated[0]!r}) needs calibration batches")
    return qrules.quantize_tree(params, rules, keep=keep)
  batches = _check_batches(batches)
  for i, b in enumerate(batches):
    _as_call(b, i)
  order = [p for p in linear_order(module, params, batches[0]) if plan.get(p) is not None]
  never = [p for p in calibrated if p not in order]
  if never:
    raise ValueError(f"quantize_model: layer(s) {never[:4]} never ran on the calibration batch; "
                     "they cannot be calibrated (keep them or use a calibration-free method)")
  order += [p for p in todo if p not in order]  # not executed: quantized without statistics
  groups: list[list[str]] = []
  for p in order:
    if groups and block_of(groups[-1][0]) == block_of(p):
      groups[-1].append(p)
    else:
      groups.append([p])

  current = dict(flat)        # what the forward pass uses (dequantized where quantized)
  out = dict(flat)
  report = qrules.QuantReport()
  all_stats: dict[str, LayerStats] = {}
  if not sequential:
    all_stats = collect_stats(module, params, batches, paths=order)
  done = 0
  for group in groups:
    if sequential:
      stats = collect_stats(module, jtree.unflatten(current, like=params), batches,
                            paths=group)
    else:
      stats = {p: all_stats[p] for p in group if p in all_stats}
    for path in group:
      if progress is not None:
        progress(path, done, len(order))
      method, cfg = plan[path]
      w = flat[path]
      t0 = time.perf_counter()
      st = stats.get(path)
      qa = qrules.quantize_leaf(w, method, cfg, stats=st, name=path)
      jax.block_until_ready(qa)
      out[path] = qa
      current[path] = qrules.effective_weight(qa, w.dtype).reshape(w.shape)
      report.entries[path] = qrules.make_entry(path, w, qa, method, reasons[path], stats=st,
                                               seconds=time.perf_counter() - t0)
      done += 1
  final = qrules.QuantReport()
  for path, leaf in flat.items():
    final.add(report.entries[path] if path in report.entries else
              qrules.keep_entry(path, leaf, reasons[path]))
  return jtree.unflatten(out, like=params), final


def _needs_calibration(method: str) -> bool:
  return qrules._get(method).calibrated  # pylint: disable=protected-access


# ----------------------------------------------------------------------------- text
def text_batches(tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32,
                 max_length: int = 128, token_type_ids: bool = False) -> list[dict[str, np.ndarray]]:
  """Tokenizes calibration texts into padded batches ``{'input_ids', 'attention_mask'}``.

  Args:
    tokenizer: a ``tokenizers.Tokenizer`` (padding/truncation are set on a copy).
    texts: the calibration texts (empty lines are dropped).
    batch_size: sentences per batch.
    max_length: truncation length in tokens.
    token_type_ids: also return zeros ``token_type_ids`` (BERT).

  Raises:
    ValueError: no non-empty text.
  """
  texts = [t for t in (s.strip() for s in texts) if t]
  if not texts:
    raise ValueError("calibration text is empty")
  import copy  # pylint: disable=g-import-not-at-top
  tok = copy.deepcopy(tokenizer)
  tok.enable_truncation(max_length=max_length)
  pad_id = next((tok.token_to_id(t) for t in ("[PAD]", "<pad>", "</s>", "<|endoftext|>")
                 if tok.token_to_id(t) is not None), 0)
  tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "[PAD]")
  out = []
  for i in range(0, len(texts), batch_size):
    encs = tok.encode_batch(texts[i:i + batch_size])
    b = {"input_ids": np.array([e.ids for e in encs], np.int32),
         "attention_mask": np.array([e.attention_mask for e in encs], np.int32)}
    if token_type_ids:
      b["token_type_ids"] = np.zeros_like(b["input_ids"])
    out.append(b)
  return out
