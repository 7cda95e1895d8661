"""Streaming driver: a transform record over safetensors checkpoints on disk.

:func:`stream_checkpoints` runs a list of :class:`StreamTask` (one per output
tensor, or per group of outputs): the inputs of each task are read in a
background :class:`~jaxparams.transform.prefetch.Prefetcher` (one tensor per
input at a time, the next task's read ahead, bounded in tasks and bytes,
stopped and joined before any cleanup, also on Ctrl-C), the record runs under
``jax.jit`` (compiled once per record, static config, shape and dtype; array
hyperparameters whose value differs between tasks are traced arguments, so
per-layer values do not recompile), its static checks run on the host with the
concrete config, its value checks (NaN/Inf) inside the same jitted call, read
with the output. Each task is dispatched before the previous one's results are
fetched, checked and written (jax calls are asynchronous, so writing overlaps
computing). Inputs are read into 64-byte aligned buffers, which XLA's CPU client
uses without a copy. Results go to :class:`jaxparams.io.SafetensorsWriter`
(sharded, HF index, atomic: nothing is left behind on an error), written to disk
as they come (``header_reserve``), not held per shard. Tasks without
a record copy their input unchanged. A record may return a dict
``{suffix: array}`` (e.g. ``qweight``/``scales``/``zeros``): each becomes one
output tensor, named by :meth:`StreamTask.output_name`.

Example:
  >>> import dataclasses, os, tempfile, numpy as np
  >>> from jaxparams.io import save_safetensors, load_safetensors, open_checkpoint
  >>> from jaxparams.transform import Transform, checks
  >>> @dataclasses.dataclass(frozen=True, kw_only=True)
  ... class ScaleConfig:
  ...   factor: float = 2.0
  >>> scale = Transform(name='scale', fn=lambda x, c: x * c.factor, config=ScaleConfig,
  ...                   array_params=('factor',), checks=(checks.finite,))
  >>> d = tempfile.mkdtemp()
  >>> save_safetensors({'a': np.ones(2, np.float32), 'b': np.ones(2, np.float32)},
  ...                  os.path.join(d, 'in'))
  >>> tasks = [StreamTask('a', (('in', 'a'),), scale, scale.make_config(factor=3.0)),
  ...          StreamTask('b', (('in', 'b'),))]  # no record: copied
  >>> with open_checkpoint(os.path.join(d, 'in')) as r:
  ...   _ = stream_checkpoints(tasks, {'in': r}, os.path.join(d, 'out'))
  >>> {k: v.tolist() for k, v in sorted(load_safetensors(os.path.join(d, 'out')).items())}
  {'a': [3.0, 3.0], 'b': [1.0, 1.0]}
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.io import SafetensorsWriter, check_output_dir, check_output_tensor
from jaxparams.transform.keys import tensor_key
from jaxparams.transform.prefetch import Prefetcher
from jaxparams.transform.record import Transform

__all__ = ["StreamTask", "stream_checkpoints", "run_tasks", "make_sharding", "TRACE_ERRORS"]

_log = logging.getLogger(__name__)

TRACE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError)


@dataclasses.dataclass(frozen=True, eq=False)
class StreamTask:
  """One unit of work of the streaming driver.

  Attributes:
    name: the output tensor's name.
    inputs: ``(source, tensor)`` pairs to read (``inputs='one'``: one pair;
      ``'base+models'``: the base first when ``has_base``, then the models).
    record: the transform; ``None`` copies ``inputs[0]`` unchanged.
    config: the record's config for this tensor.
    has_base: the first input is the base.
    labels: one label per input for error messages (default: the sources).
    compute_dtype: inputs are cast to it before the record runs (inside jit).
    out_dtype: array outputs are cast to it; a copy (no record) is not cast but checked
      to have it.
    options: keyword options of the record's function.
    outputs: for dict results, suffix -> output tensor name (default
      :meth:`output_name`).
    meta: anything the area wants to keep with the task.
    out_shape: the shape an array result (or a copy) must have (e.g. the base tensor's, or
      the config's), checked before it is written; ``None``: not checked.
  """

  name: str
  inputs: tuple[tuple[str, str], ...]
  record: Transform | None = None
  config: Any = None
  has_base: bool = False
  labels: tuple[str, ...] | None = None
  compute_dtype: Any = None
  out_dtype: Any = None
  options: Mapping[str, Any] | None = None
  outputs: Mapping[str, str] | None = None
  meta: Any = None
  out_shape: tuple[int, ...] | None = None

  def output_name(self, suffix: str) -> str:
    """Name of the output ``suffix`` of a dict result.

    ``''`` is the task's name; otherwise the last ``.``-component of the name
    is replaced (``layers.0.q_proj.weight`` + ``qweight`` ->
    ``layers.0.q_proj.qweight``), unless ``outputs`` says otherwise.

    Example:
      >>> StreamTask('layers.0.q.weight', (('m', 'layers.0.q.weight'),)).output_name('scales')
      'layers.0.q.scales'
    """
    if self.outputs is not None and suffix in self.outputs:
      return self.outputs[suffix]
    if not suffix:
      return self.name
    stem = self.name.rsplit(".", 1)[0] if "." in self.name else self.name
    return f"{stem}.{suffix}"


def _hashable(v: Any) -> Any:
  if isinstance(v, (list, tuple)):
    return tuple(_hashable(x) for x in v)
  return v


def _is_num(v: Any) -> bool:
  return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)


def _traceable(v: Any) -> bool:
  if isinstance(v, (list, tuple)):
    return bool(v) and all(_is_num(x) for x in v)
  return _is_num(v)


def _varying(tasks: Sequence[StreamTask]) -> dict[int, set[str]]:
  """Per record (by id): array parameters whose value differs between tasks."""
  first: dict[int, dict[str, Any]] = {}
  out: dict[int, set[str]] = {}
  for t in tasks:
    if t.record is None or t.config is None:
      continue
    rid = id(t.record)
    seen = first.setdefault(rid, {})
    out.setdefault(rid, set())
    for name in t.record.array_params:
      v = _hashable(getattr(t.config, name))
      if seen.setdefault(name, v) != v:
        out[rid].add(name)
  return out


class _Compiled:
  """jit-compiled ``record.apply`` per (record, static config, structure, dtypes)."""

  def __init__(self, tasks: Sequence[StreamTask], skip: Collection[str]):
    self.varying = _varying(tasks)
    self.skip = tuple(skip)
    self.static_only: set[int] = set()
    self._fns: dict[Any, Any] = {}
    self._checked: set[Any] = set()

  def _fn(self, record: Transform, static_cfg: Any, traced: tuple[str, ...], has_base: bool,
          n: int, compute: Any, out_dtype: Any, labels: tuple[str, ...], options: Any):
    ck = (id(record), static_cfg, traced, has_base, n, compute, out_dtype, labels, options)
    fn = self._fns.get(ck)
    if fn is not None:
      return fn
    skip = self.skip

    def run(arrays, values, key):
      cfg = record.join_config(static_cfg, {
          k: (tuple(v[j] for j in range(v.shape[0])) if v.ndim else v)
          for k, v in values.items()})
      xs = [a.astype(compute) if compute is not None else a for a in arrays]
      if record.inputs == "one":
        args: tuple[Any, ...] = (xs[0],)
      elif has_base:
        args = (xs[0], xs[1:])
      else:
        args = (None, xs)
      out, flags = record.apply(*args, config=cfg, key=key, labels=labels,
                                options=dict(options), skip=skip, static_checks=False)
      if out_dtype is not None:
        out = jax.tree_util.tree_map(lambda o: o.astype(out_dtype), out)
      return out, flags

    fn = jax.jit(run)
    self._fns[ck] = fn
    return fn

  def __call__(self, task: StreamTask, arrays: list, key: jax.Array | None):
    record = task.record
    config = record.coerce_config(task.config)
    labels = task.labels or tuple(s for s, _ in task.inputs)
    if record.inputs == "one":
      args: tuple[Any, ...] = (arrays[0],)
    elif task.has_base:
      args = (arrays[0], arrays[1:])
    else:
      args = (None, arrays)
    arranged = record._arrange(args, task.name)  # pylint: disable=protected-access
    compute = None if task.compute_dtype is None else jnp.dtype(task.compute_dtype)
    out_dtype = None if task.out_dtype is None else jnp.dtype(task.out_dtype)
    ctx = record.context(arranged, config, task.name, labels)
    if compute is not None:
      ctx = dataclasses.replace(ctx, dtypes=tuple(None if d is None else compute
                                                  for d in ctx.dtypes))
    ck = (id(record), _hashable(tuple(getattr(config, f.name) for f in
                                      dataclasses.fields(config))), ctx.shapes, ctx.dtypes)
    if ck not in self._checked:  # the record's static checks, on the host, concrete values
      record.run_static_checks(ctx, self.skip)
      self._checked.add(ck)
    options = tuple(sorted((task.options or {}).items()))
    while True:
      rid = id(record)
      names = () if rid in self.static_only else tuple(sorted(
          k for k in self.varying.get(rid, ()) if _traceable(getattr(config, k))))
      static_cfg, values = record.split_config(config, names)
      values = {k: jnp.asarray(np.asarray(v, np.float32)) for k, v in values.items()}
      fn = self._fn(record, static_cfg, names, task.has_base, len(arrays), compute, out_dtype,
                    tuple(labels), options)
      try:
        out, flags = fn(tuple(arrays), values, key)
      except TRACE_ERRORS:
        if not names:
          raise
        self.static_only.add(rid)  # this record needs concrete parameters: compile statically
        continue
      return out, flags, ctx


def make_sharding(shard: bool | None, min_bytes: int = 1 << 24):
  """Axis-0 sharding over all devices for large tensors, or ``None``.

  ``shard=None``: only when there are several GPUs/TPUs.

  Example:
    >>> make_sharding(False) is None
    True
  """
  devices = jax.devices()
  if shard is None:
    shard = len(devices) > 1 and jax.default_backend() in ("gpu", "tpu")
  if not shard or len(devices) < 2:
    return None
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")), len(devices), min_bytes


def _place(arrays: list, sharding) -> list:
  if sharding is None:
    return arrays
  spec, n, min_bytes = sharding
  a0 = arrays[0]
  if a0.ndim == 0 or a0.shape[0] % n or a0.nbytes < min_bytes:
    return arrays
  return [jax.device_put(a, spec) for a in arrays]


def stream_checkpoints(tasks: Sequence[StreamTask], sources: Mapping[str, Any],
                       out_dir: str | Path, *, key: jax.Array | None = None,
                       overwrite: bool = False, max_shard_bytes: int | float = 5e9,
                       prefetch: int = 2, prefetch_bytes: int | float = 2e9,
                       prepare: Callable[[StreamTask, dict], dict] | None = None,
                       skip: Collection[str] = (), shard: Any = None,
                       progress: Callable[[int, int, int], None] | None = None,
                       finalize: Callable[[SafetensorsWriter], None] | None = None,
                       context: str = "", metadata: Mapping[str, str] | None = None
                       ) -> dict[str, Any]:
  """Runs ``tasks`` over checkpoints, tensor by tensor, into ``out_dir``.

  Args:
    tasks: what to compute, in output order.
    sources: source name -> open reader (:func:`jaxparams.io.open_checkpoint`).
    out_dir: the output folder (created atomically).
    key: PRNG key of the run; random records get ``tensor_key(key, task.name)``.
    overwrite: replace an existing ``out_dir``.
    max_shard_bytes: output shard size in bytes.
    prefetch: tasks read ahead.
    prefetch_bytes: bytes read ahead (one task always may).
    prepare: ``(task, arrays) -> arrays`` in the reader thread (e.g. aligning
      vocabularies); ``arrays`` maps ``(source, tensor)`` to numpy arrays.
    skip: check names not to run (``('finite',)`` allows NaN/Inf).
    shard: the result of :func:`make_sharding` (or ``None``).
    progress: ``(done, total, bytes_read)`` after each task.
    finalize: ``writer -> None`` before the output is committed (config,
      tokenizer files...).
    context: prefix of error messages (e.g. the recipe's file).
    metadata: safetensors ``__metadata__`` of the output shards.

  Returns:
    ``{'tensors', 'bytes_read', 'bytes_written', 'seconds', 'out_dir'}``.

  Raises:
    FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
    ValueError: a failing check (naming the tensor and the input).
  """
  t0 = time.perf_counter()
  out_dir = Path(out_dir)
  check_output_dir(out_dir, overwrite)
  # Every written tensor (results cast to their output dtype, and copies) is checked finite
  # before the folder is published, unless the caller allows NaN/Inf (skip=('finite',)).
  writer_kwargs: dict[str, Any] = {"max_shard_bytes": int(max_shard_bytes),
                                   "overwrite": overwrite,
                                   "check_outputs": "finite" not in skip,
                                   "header_reserve": header_reserve(tasks, metadata)}
  if metadata is not None:
    writer_kwargs["metadata"] = metadata
  with _DeferredInterrupt() as interrupt, SafetensorsWriter(out_dir, **writer_kwargs) as writer:
    done, bytes_read = _run(tasks, sources, writer, interrupt, key=key, prefetch=prefetch,
                            prefetch_bytes=prefetch_bytes, prepare=prepare, skip=skip,
                            shard=shard, progress=progress, context=context, emit=None)
    interrupt.check()
    if finalize is not None:
      finalize(writer)
  return {"tensors": done, "bytes_read": bytes_read, "bytes_written": writer.total_bytes,
          "seconds": time.perf_counter() - t0, "out_dir": str(out_dir)}


Emit = Callable[[StreamTask, list], Sequence[tuple[str, Any]]]
"""``emit(task, outputs) -> outputs``: a task's checked ``[(name, array)]`` before writing."""


def run_tasks(tasks: Sequence[StreamTask], sources: Mapping[str, Any], writer: SafetensorsWriter,
              *, emit: Emit | None = None, key: jax.Array | None = None, prefetch: int = 2,
              prefetch_bytes: int | float = 2e9,
              prepare: Callable[[StreamTask, dict], dict] | None = None,
              skip: Collection[str] = (), shard: Any = None,
              progress: Callable[[int, int, int], None] | None = None,
              context: str = "") -> dict[str, int]:
  """Runs ``tasks`` as :func:`stream_checkpoints` does, into a writer the caller owns.

  For an area that writes more than the tasks into the same output (tensors computed
  before, a layout of its own): the caller opens the
  :class:`~jaxparams.io.SafetensorsWriter` (its shards, header room, metadata) and
  commits it; this runs the tasks between. ``emit`` turns each task's checked outputs
  (the record's results, or the input of a copy task) into the tensors to write, on
  the host, in task order (e.g. quantization: one weight into its packed parts).

  Args:
    tasks: what to compute, in output order.
    sources: source name -> open reader.
    writer: an open writer; every output is added to it.
    emit: ``(task, [(name, array)]) -> [(name, array)]``, run after the task's checks;
      ``None`` writes the outputs as they are.
    key, prefetch, prefetch_bytes, prepare, skip, shard, progress, context: as for
      :func:`stream_checkpoints`.

  Returns:
    ``{'tensors', 'bytes_read'}``.

  Raises:
    ValueError: a failing check, or one raised by ``emit`` (prefixed by ``context``).
  """
  with _DeferredInterrupt() as interrupt:
    done, bytes_read = _run(tasks, sources, writer, interrupt, key=key, prefetch=prefetch,
                            prefetch_bytes=prefetch_bytes, prepare=prepare, skip=skip,
                            shard=shard, progress=progress, context=context, emit=emit)
    interrupt.check()
  return {"tensors": done, "bytes_read": bytes_read}


def _run(tasks: Sequence[StreamTask], sources: Mapping[str, Any], writer: SafetensorsWriter,
         interrupt: "_DeferredInterrupt", *, key, prefetch, prefetch_bytes, prepare, skip, shard,
         progress, context, emit: Emit | None) -> tuple[int, int]:
  """The task loop: read ahead, dispatch, then check and write the previous task."""
  compiled = _Compiled(tasks, skip)
  prefix = f"{context}: " if context else ""
  bytes_read = done = 0

  def finish(started: tuple) -> list:
    outs = _finish_task(started, compiled)
    return outs if emit is None else list(emit(started[0], outs))

  # The prefetcher is stopped and joined before the writer cleans up (inner `with`).
  with Prefetcher(tasks, sources, max_items=prefetch, max_bytes=int(prefetch_bytes),
                  prepare=prepare) as reader:
    inflight: list = []
    pending = None  # the previous task, dispatched (XLA computes it) but not yet written
    pending_inputs: list = []  # its input arrays: read buffers to reuse once it is written
    for task, arrays, nbytes in reader:
      interrupt.check()
      _log.debug("%s%s: %s from %d inputs (%d bytes)", prefix, task.name,
                 task.record.name if task.record is not None else "copy", len(task.inputs),
                 nbytes)
      with _drained_on_error(inflight, prefix):
        # Dispatch this task, then fetch, check and write the previous one while XLA
        # computes this one (jax calls are asynchronous).
        inputs = [arrays[i] for i in task.inputs]
        started = _start_task(task, inputs, compiled, key, shard)
        inflight[:] = [started[1]] + ([pending[1]] if pending is not None else [])
        outs = finish(pending) if pending is not None else []
        pending, done_inputs, pending_inputs = started, pending_inputs, inputs
      del arrays, inputs
      with _drained_on_error(inflight):  # e.g. a NaN output: the dispatched task finishes first
        for name, value in outs:
          writer.add(name, value)  # written through to the file: nothing keeps `value`
      outs = value = None
      # The previous task is computed and written: its input buffers take later reads
      # (a fresh buffer per tensor costs page faults). Not while a writer queues arrays.
      if writer.header_reserve is not None:
        reader.recycle(done_inputs)
      del done_inputs
      bytes_read += nbytes
      done += 1
      interrupt.check()
      if progress is not None:
        progress(done, len(tasks), bytes_read)
    if pending is not None:
      with _drained_on_error(inflight, prefix):
        outs = finish(pending)
        inflight.clear()
      for name, value in outs:
        writer.add(name, value)
  return done, bytes_read


def header_reserve(tasks: Sequence[StreamTask], metadata: Mapping[str, str] | None = None
                   ) -> int:
  """Header bytes reserved per output shard: room for every task's entries, twice.

  The writer then writes each result as it comes (one tensor in host memory, not
  one shard) and fills the header at the end; a header that outgrows this (many
  dict outputs per task) only costs moving the shard's data once.

  Example:
    >>> header_reserve([StreamTask('w', (('m', 'w'),))])
    1242
  """
  meta = sum(len(k) + len(v) + 8 for k, v in (metadata or {"format": "pt"}).items())
  return 1024 + meta + sum(2 * (len(t.name) + 100) for t in tasks)


class _DeferredInterrupt:
  """Ctrl-C is honoured between tensors, never inside a JAX call.

  A ``KeyboardInterrupt`` raised while JAX/XLA is dispatching or computing can leave
  native state that crashes the interpreter at exit (a segfault after the clean-up
  message). In the main thread, the first SIGINT only sets a flag that :meth:`check`
  turns into ``KeyboardInterrupt`` at the next tensor boundary; a second one interrupts
  at once. Elsewhere (a worker thread, a custom handler installed) nothing changes.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True

  def __enter__(self) -> "_DeferredInterrupt":
    if (threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
      self._previous = signal.signal(signal.SIGINT, self._handler)
    return self

  def check(self) -> None:
    """Raises ``KeyboardInterrupt`` if Ctrl-C was pressed."""
    if self.requested:
      raise KeyboardInterrupt

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None


@contextlib.contextmanager
def _drained_on_error(inflight: list, prefix: str | None = None):
  """On any exception, first let the dispatched computations finish (Ctrl-C while XLA still
  computes: tearing down or exiting under a running computation can crash the process); a
  ``ValueError`` is raised again with ``prefix`` when one is given."""
  try:
    yield
  except ValueError as e:
    _drain(inflight)
    if prefix is None:
      raise
    raise type(e)(f"{prefix}{e}") from None
  except BaseException:
    _drain(inflight)
    raise


def _drain(inflight: list) -> None:
  try:
    jax.block_until_ready(inflight)
  except Exception:  # pylint: disable=broad-except
    pass
  inflight.clear()


def _start_task(task: StreamTask, arrays: list, compiled: _Compiled, key, shard) -> tuple:
  """Dispatches one task (XLA runs it asynchronously): ``(task, in-flight values, ctx)``."""
  if task.record is None:
    return task, arrays[0], None
  record = task.record
  k = tensor_key(key, task.name) if (key is not None and record.needs_key is not False) else None
  placed = _place(arrays, shard)
  out, flags, ctx = compiled(task, placed, k)
  return task, (placed, out, flags), ctx


def _finish_task(started: tuple, compiled: _Compiled) -> list[tuple[str, np.ndarray]]:
  """Waits for a dispatched task, runs its value checks, returns its named host arrays."""
  task, value, ctx = started
  if task.record is None:
    # A copy is written as read: its shape and dtype against what the area expects of it
    # (e.g. the source tensor's), when it says; finiteness is the writer's.
    check_output_tensor(task.name, value, where="copy", shape=task.out_shape,
                        dtype=task.out_dtype, finite=False)
    return [(task.name, value)]
  _, out, flags = value
  if flags.shape[0]:
    task.record.verify(np.asarray(flags), ctx, compiled.skip)
  if isinstance(out, Mapping):
    return [(task.output_name(s), np.asarray(v)) for s, v in out.items()]
  out = np.asarray(out)
  # The result's shape against what the area expects (base / config), its dtype against the
  # requested output dtype; finiteness is the writer's (check_outputs), after this cast.
  check_output_tensor(task.name, out, where=f"{task.record.name}", shape=task.out_shape,
                      dtype=task.out_dtype, finite=False)
  return [(task.name, out)]
