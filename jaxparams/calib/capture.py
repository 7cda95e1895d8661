"""Layer-input capture: what every Dense-like layer of a flax model sees.

Capture uses flax method interception (``nn.intercept_methods``): every
``__call__`` of a module owning a 2-D ``kernel`` parameter (the reference
models' ``Linear``, flax's ``nn.Dense``) is seen with its input ``x[..., K]``,
addressed by the kernel's path in the project's ``a/b/c`` form
(``'layers_0/attn/q_proj/kernel'``). Rows that are padding
(``attention_mask == 0``) are dropped from token-shaped inputs.

* :func:`capture_inputs`: the raw input rows ``[n, K]`` of each layer (one forward).
* :func:`collect_stats`: :class:`~jaxparams.calib.stats.InputStats` of each layer
  accumulated over calibration batches inside one jit-compiled forward pass
  (layers sharing one input, e.g. q/k/v, share one ``X^T X``).
* :func:`linear_order`: the layers in execution order (abstract trace, nothing computed).
* :func:`block_of`: the transformer block a kernel path belongs to.
* :func:`capture_calls`: the input and output of chosen modules (any kind, addressed by
  module path ``'layers_1/mlp/down_proj'``) in one call of the model, optionally steered
  (an input or output replaced), inside the caller's ``jit``/``grad``.
* :func:`intercept`: the interception primitive under all of these: run a hook instead of
  the ``__call__`` of the modules at given paths (:func:`module_path`).

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
  >>> collect_stats(model, params, [ids])['layers_0/mlp/down_proj/kernel'].n
  10
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxparams.calib.stats import InputStats, accumulate

__all__ = ["capture_inputs", "collect_stats", "stats_runner", "linear_order", "block_of",
           "as_call", "check_batches", "linear_path", "input_abs_max", "module_path", "intercept",
           "capture_calls"]


def module_path(module: Any) -> str | None:
  """The path ``'layers_1/mlp/down_proj'`` of a bound flax module (as seen inside an
  interceptor; ``''`` for the root module), None for anything else.

  Example:
    >>> module_path(object()) is None
    True
  """
  try:
    return "/".join(module.scope.path)
  except Exception:  # pylint: disable=broad-except
    return None


def _linear_path(module: nn.Module, args: tuple) -> str | None:
  """The kernel path when ``module`` is a Dense-like layer called on ``args``, else None."""
  try:
    if not module.has_variable("params", "kernel"):
      return None
    kernel = module.get_variable("params", "kernel")
  except Exception:  # pylint: disable=broad-except
    return None
  shape = getattr(kernel, "shape", ())
  if len(shape) != 2 or not args or not hasattr(args[0], "shape"):
    return None
  if args[0].shape[-1] != shape[0]:
    return None
  return module_path(module) + "/kernel"


def linear_path(module: nn.Module, args: tuple) -> str | None:
  """The kernel path of a Dense-like ``module`` called on ``args`` (inside an interceptor), else None.

  Example:
    >>> import jax.numpy as jnp
    >>> linear_path(object(), (jnp.ones(2),)) is None
    True
  """
  return _linear_path(module, args)


def _variables(params: Any) -> dict:
  if isinstance(params, Mapping) and set(params) == {"params"}:
    return dict(params)
  return {"params": params}


def _rows(x: jax.Array, token_mask: np.ndarray | None) -> jax.Array:
  if token_mask is not None and tuple(x.shape[:-1]) == tuple(token_mask.shape):
    return x[np.asarray(token_mask, bool)]
  return x.reshape(-1, x.shape[-1])


def as_call(batch: Any, i: int = 0) -> tuple[tuple, dict]:
  """Splits a calibration batch into call arguments ``(args, kwargs)`` and checks it.

  A batch is a dict of keyword arguments (``{'input_ids', 'attention_mask', ...}``),
  a tuple of positional arguments, or one array.

  Raises:
    ValueError: ``input_ids`` not int ``[batch, seq]``; a mask of another shape.

  Example:
    >>> import numpy as np
    >>> as_call(np.zeros((1, 3), np.int32))[0][0].shape
    (1, 3)
  """
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


def check_batches(batches: Any) -> list:
  """A list of calibration batches (one batch is wrapped); ValueError when empty."""
  if isinstance(batches, (Mapping, np.ndarray, jax.Array)):
    batches = [batches]
  batches = list(batches)
  if not batches:
    raise ValueError("calibration: no batches given")
  return batches


def _device_call(a: tuple, kwargs: Mapping) -> tuple[tuple, dict]:
  return (tuple(jnp.asarray(x) for x in a),
          {k: jnp.asarray(v) for k, v in kwargs.items() if v is not None})


def capture_inputs(module: nn.Module, params: Any, *args: Any, paths: Iterable[str] | None = None,
                   token_mask: Any = None, **kwargs: Any) -> dict[str, jax.Array]:
  """Runs the model once (jit-compiled) and returns the input rows ``[rows, K]`` of each layer.

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
  a, kw = _device_call(args, kwargs)
  order = [p for p in linear_order(module, params, (a, kw)) if want is None or p in want]

  def run(params, a, kw):
    got: dict[str, list] = {}

    def interceptor(next_fun, a_, kw_, context):
      if context.method_name == "__call__":
        path = _linear_path(context.module, a_)
        if path is not None and (want is None or path in want):
          got.setdefault(path, []).append(a_[0])
      return next_fun(*a_, **kw_)

    with nn.intercept_methods(interceptor):
      module.apply(_variables(params), *a, **kw)
    return got

  out = jax.jit(run)(params, a, kw)
  return {p: jnp.concatenate([_rows(x, mask) for x in out[p]]) for p in order if p in out}


def stats_runner(module: nn.Module, paths: Iterable[str] | None = None) -> Callable:
  """A jitted ``f(params, args, kwargs, mask) -> {path: InputStats}`` of one batch.

  Covers the layers in ``paths`` (all when None); rows with ``mask == 0`` contribute
  nothing (when the input is token-shaped). Layers after the last requested one are
  dead code that XLA removes, and layers sharing one input share one ``X^T X``.
  """
  want = None if paths is None else frozenset(paths)

  def run(params, args, kwargs, mask):
    acc: dict[str, InputStats] = {}
    by_input: dict[int, tuple] = {}

    def interceptor(next_fun, a, kw, context):
      if context.method_name == "__call__":
        path = _linear_path(context.module, a)
        if path is not None and (want is None or path in want):
          key = id(a[0])
          if key in by_input:
            new = by_input[key][1]
          else:
            x = a[0]
            rows = int(np.prod(x.shape[:-1]))
            if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
              m = mask
            else:
              m = jnp.ones((rows,), jnp.float32)
            new = accumulate(None, x, m)
            by_input[key] = (a[0], new)  # keeps a[0] alive so its id stays unique
          old = acc.get(path)
          acc[path] = new if old is None else old + new
      return next_fun(*a, **kw)

    with nn.intercept_methods(interceptor):
      module.apply(_variables(params), *args, **kwargs)
    return acc

  return jax.jit(run)


def collect_stats(module: nn.Module, params: Any, batches: Any, *,
                  paths: Iterable[str] | None = None, runner: Callable | None = None
                  ) -> dict[str, InputStats]:
  """Accumulates :class:`InputStats` of every (or the given) layer over calibration batches.

  The forward pass is jit-compiled once per batch shape (pad calibration batches to
  one length, as :func:`jaxparams.calib.corpus.text_batches` does, to compile once).

  Args:
    module: flax module.
    params: its params.
    batches: a batch or a list of batches (see :func:`as_call`); ``attention_mask``
      also masks padding rows out of the statistics.
    paths: kernel paths to return (default all).
    runner: a reusable compiled :func:`stats_runner` (for repeated calls).

  Raises:
    ValueError: a batch of the wrong shape or dtype; NaN/inf in the captured inputs.
  """
  run = runner or stats_runner(module, paths)
  want = None if paths is None else set(paths)
  totals: dict[str, InputStats] = {}
  for i, batch in enumerate(check_batches(batches)):
    a, kw = as_call(batch, i)
    mask = kw.get("attention_mask")
    mask = None if mask is None else jnp.asarray(mask)
    out = run(params, *_device_call(a, kw), mask)
    for path, s in out.items():
      if want is not None and path not in want:
        continue
      totals[path] = totals[path] + s if path in totals else s
  for path, s in totals.items():
    if not bool(jnp.all(jnp.isfinite(s.xtx))):
      raise ValueError(f"calibration inputs of {path!r} contain NaN/inf (X^T X not finite)")
  return totals


def linear_order(module: nn.Module, params: Any, batch: Any) -> list[str]:
  """Kernel paths of the Dense-like layers in the order the forward pass calls them.

  Traced abstractly with ``jax.eval_shape``: nothing is computed. ``batch`` is a
  calibration batch or an ``(args, kwargs)`` pair.
  """
  order: list[str] = []

  def interceptor(next_fun, a, kw, context):
    if context.method_name == "__call__":
      path = _linear_path(context.module, a)
      if path is not None and path not in order:
        order.append(path)
    return next_fun(*a, **kw)

  a, kw = batch if (isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], dict)
                    ) else as_call(batch, 0)

  def f(p, a, kw):
    with nn.intercept_methods(interceptor):
      return module.apply(_variables(p), *a, **kw)

  jax.eval_shape(f, params, *_device_call(a, kw))
  return order


def input_abs_max(module: nn.Module, params: Any, states: Sequence, paths: Iterable[str]
                  ) -> dict[str, jax.Array]:
  """Per-input-channel ``max |x|`` (float32) of the layers ``paths`` over calibration calls.

  Args:
    module: a flax module (a whole model or one block).
    params: its params.
    states: its call arguments ``[(args, kwargs)]`` (e.g. a block's inputs per batch).
    paths: kernel paths relative to ``module``; a layer called twice counts its first call.

  Returns:
    ``{path: [K] max |x|}`` for the layers called.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxparams as jp
    >>> mlp = jp.models.MLP(features=(4, 2))
    >>> p = mlp.init(jax.random.key(0), jnp.ones((1, 3)))['params']
    >>> x = jnp.array([[1., -5., 2.], [-3., 1., 0.]])
    >>> input_abs_max(mlp, p, [((x,), {})], ['layers_0/kernel'])['layers_0/kernel'].tolist()
    [3.0, 5.0, 2.0]
  """
  want = frozenset(paths)

  @jax.jit
  def run(p, a, kw):
    got: dict[str, jax.Array] = {}

    def interceptor(next_fun, a_, kw_, context):
      if context.method_name == "__call__":
        path = _linear_path(context.module, a_)
        if path in want and path not in got:
          x = a_[0].astype(jnp.float32)
          got[path] = jnp.max(jnp.abs(x.reshape(-1, x.shape[-1])), axis=0)
      return next_fun(*a_, **kw_)

    with nn.intercept_methods(interceptor):
      module.apply({"params": p}, *a, **kw)
    return got

  acc: dict[str, jax.Array] = {}
  for a, kw in states:
    for k, v in run(params, a, kw).items():
      acc[k] = v if k not in acc else jnp.maximum(acc[k], v)
  return acc


Hook = Callable[[str, Callable, tuple, dict], Any]


@contextlib.contextmanager
def intercept(hooks: Mapping[Any, Hook], *, kinds: Mapping[Any, Any] | None = None
              ) -> Iterator[None]:
  """Within the context, a ``__call__`` of a module at a path of ``hooks`` runs
  ``hooks[key](path, next_fun, args, kwargs)`` instead (``next_fun(*args, **kwargs)`` is the
  module's own call); every other method call runs unchanged.

  Args:
    hooks: keys are module paths (:func:`module_path`, ``'layers_1/mlp/down_proj'``) or
      compiled regular expressions matched against the whole path (an exact path wins).
    kinds: optional ``{key: type or tuple of types}``: the module at that key's paths must
      also be an instance of it (others run unchanged).

  Raises:
    ValueError: a key that is neither a string nor a compiled pattern.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxparams as jp
    >>> mlp = jp.models.MLP(features=(4, 2))
    >>> x = jnp.ones((1, 3))
    >>> p = mlp.init(jax.random.key(0), x)['params']
    >>> double = lambda path, f, a, kw: 2 * f(*a, **kw)
    >>> with intercept({'layers_1': double}):
    ...   y = mlp.apply({'params': p}, x)
    >>> bool(jnp.allclose(y, 2 * mlp.apply({'params': p}, x)))
    True
  """
  bad = [k for k in hooks if not isinstance(k, (str, re.Pattern))]
  if bad:
    raise ValueError(f"intercept: hook keys must be module paths ('layers_1/mlp/down_proj') or "
                     f"compiled patterns, got {bad!r}")
  exact = {k: h for k, h in hooks.items() if isinstance(k, str)}
  patterns = [k for k in hooks if isinstance(k, re.Pattern)]
  kinds = dict(kinds or {})

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    path = module_path(context.module)
    if path is None:
      return next_fun(*args, **kwargs)
    key = path if path in exact else next((k for k in patterns if k.fullmatch(path)), None)
    if key is None or (key in kinds and not isinstance(context.module, kinds[key])):
      return next_fun(*args, **kwargs)
    return hooks[key](path, next_fun, args, kwargs)

  with nn.intercept_methods(interceptor):
    yield


def _key_of(path: str, keys: Iterable[Any]) -> Any:
  """The key of ``keys`` addressing ``path``: the path itself, else the first pattern matching
  it whole, else None."""
  if path in keys:
    return path
  return next((k for k in keys if isinstance(k, re.Pattern) and k.fullmatch(path)), None)


def capture_calls(module: nn.Module, params: Any, *args: Any, inputs: Iterable[str] = (),
                  outputs: Iterable[str] = (),
                  steer_inputs: Mapping[str, Callable[[Any], Any]] | None = None,
                  steer_outputs: Mapping[str, Callable[[Any], Any]] | None = None,
                  kinds: Mapping[str, Any] | None = None, **kwargs: Any
                  ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
  """Applies ``module`` once, reading (and optionally steering) the calls of chosen modules.

  Unlike :func:`capture_inputs` this neither compiles nor reshapes: it runs inside the
  caller's ``jit``/``grad``/``vmap``, addresses any module (a linear, a block, a norm) by its
  module path, and returns the values whole (``[batch, seq, d]``).

  Every path below may also be a compiled regular expression matched against whole module
  paths (``re.compile(r'(?:.*/)?mlp/down_proj')``: every layer's); results are keyed by the
  paths called.

  Args:
    module: a flax linen module.
    params: its ``'params'`` collection (or ``{'params': ...}``).
    *args: positional call arguments.
    inputs: module paths whose first positional input to return, as the module received
      it (after ``steer_inputs``).
    outputs: module paths whose output to return, as the module returned it (before
      ``steer_outputs``).
    steer_inputs: ``{path: f}``: the module at ``path`` is called on ``f(x)`` instead of its
      first positional input ``x``.
    steer_outputs: ``{path: f}``: the model continues with ``f(y)`` instead of the module's
      output ``y``.
    kinds: ``{path or pattern: type}``: only a module of that type there is read or steered.
    **kwargs: keyword call arguments.

  Returns:
    ``(model output, {path: input}, {path: output})``; a module called several times keeps
    its last call, and a path never called is absent.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxparams as jp
    >>> mlp = jp.models.MLP(features=(4, 2))
    >>> x = jnp.ones((1, 3))
    >>> p = mlp.init(jax.random.key(0), x)['params']
    >>> y, ins, outs = capture_calls(mlp, p, x, inputs=['layers_1'], outputs=['layers_0'],
    ...                              steer_outputs={'layers_1': jnp.zeros_like})
    >>> ins['layers_1'].shape, outs['layers_0'].shape, y.tolist()
    ((1, 4), (1, 4), [[0.0, 0.0]])
    >>> sorted(capture_calls(mlp, p, x, inputs=[re.compile('layers_.')])[1])
    ['layers_0', 'layers_1']
  """
  want_in, want_out = frozenset(inputs), frozenset(outputs)
  steer_in, steer_out = dict(steer_inputs or {}), dict(steer_outputs or {})
  got_in: dict[str, Any] = {}
  got_out: dict[str, Any] = {}

  def hook(path, next_fun, a, kw):
    k = _key_of(path, steer_in)
    if k is not None:
      a = (steer_in[k](a[0]),) + tuple(a[1:])
    if _key_of(path, want_in) is not None:
      got_in[path] = a[0]
    y = next_fun(*a, **kw)
    if _key_of(path, want_out) is not None:
      got_out[path] = y
    k = _key_of(path, steer_out)
    if k is not None:
      y = steer_out[k](y)
    return y

  paths = want_in | want_out | set(steer_in) | set(steer_out)
  with intercept({p: hook for p in paths}, kinds=kinds):
    result = module.apply(_variables(params), *args, **kwargs)
  return result, got_in, got_out


_BLOCK = re.compile(r"^(.*?(?:layers?|blocks?|h)[_./]?\d+)/")


def block_of(path: str) -> str:
  """The block a kernel belongs to (``'layers_3/attn/q_proj/kernel' -> 'layers_3'``).

  A path outside numbered blocks is its own block.

  Example:
    >>> block_of('layers_3/attn/q_proj/kernel'), block_of('pooler/kernel')
    ('layers_3', 'pooler/kernel')
  """
  m = _BLOCK.match(path)
  return m.group(1) if m else path
