"""Out-of-core merging of HF safetensors checkpoints, tensor by tensor.

:func:`merge_checkpoints` runs a mergekit recipe over checkpoints on disk:
for every output tensor it reads one tensor per input (in a prefetch thread,
so reading overlaps compute; read-ahead is bounded in tensors and bytes),
calls the method's per-tensor function under ``jax.jit`` (compiled once per
shape/dtype: numeric parameters that vary between tensors are traced, so
per-layer gradient values don't recompile) and hands the result to an atomic,
sharded :class:`jaxparams.io.SafetensorsWriter`. Peak memory is a few tensors
per input plus the output shard being filled. On any error or Ctrl-C no
output folder is left behind. With several GPUs/TPUs (or ``shard=True``),
large tensors are split along axis 0 across all devices.

Random methods (DARE, DELLA) use one key per tensor, derived from the run's
key and the tensor's name (:func:`tensor_key`, the tree driver's too), so
results do not depend on the order in which tensors are processed.

Example:
  >>> import numpy as np, tempfile, os
  >>> from jaxparams.io import save_safetensors, load_safetensors
  >>> d = tempfile.mkdtemp()
  >>> for m, v in [('a', 1.0), ('b', 3.0)]:
  ...   save_safetensors({'w': np.full((2, 2), v, np.float32)}, os.path.join(d, m))
  >>> recipe = {'merge_method': 'linear',
  ...           'models': [{'model': os.path.join(d, 'a'), 'parameters': {'weight': 1.0}},
  ...                      {'model': os.path.join(d, 'b'), 'parameters': {'weight': 1.0}}]}
  >>> _ = merge_checkpoints(recipe, os.path.join(d, 'out'), progress=False)
  >>> load_safetensors(os.path.join(d, 'out'))['w'].tolist()
  [[2.0, 2.0], [2.0, 2.0]]
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.io import SafetensorsWriter, check_output_dir, open_checkpoint
from jaxparams.io.safetensors_writer import TOKENIZER_FILES
from jaxparams.merge.plan import TensorTask, plan_merge
from jaxparams.merge.recipe import Recipe, load_recipe

from jaxparams.merge.registry import tensor_key  # re-exported: one key rule for both drivers

__all__ = ["merge_checkpoints", "plan_checkpoints", "tensor_key", "parse_size"]

_EXTRA_FILES = ("chat_template.jinja",)
_TRACE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                 jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError)


def parse_size(size: str | int | float) -> int:
  """Bytes from ``'5GB'``, ``'500M'``, ``'5e9'``, mergekit's ``'5B'`` (billion) or a number.

  Example:
    >>> parse_size('500M'), parse_size('2GB'), parse_size('5B'), parse_size(1024)
    (500000000, 2000000000, 5000000000, 1024)
  """
  if isinstance(size, (int, float)):
    return int(size)
  s = str(size).strip().upper()
  mult = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
  try:
    if len(s) > 1 and s.endswith("B") and (s[-2].isdigit() or s[-2] == "."):
      return int(float(s[:-1]) * 10**9)  # mergekit: '5B' = five billion
    s = s.removesuffix("B").removesuffix("I")
    if s and s[-1] in mult:
      return int(float(s[:-1]) * mult[s[-1]])
    return int(float(s))
  except ValueError:
    raise ValueError(f"invalid size {size!r}; use e.g. 5GB, 500M or a number of bytes.") from None


def _hashable(v: Any) -> Any:
  if isinstance(v, (list, tuple)):
    return tuple(_hashable(x) for x in v)
  return v


def _is_num(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Compiler:
  """Per-tensor jitted merge functions, one per static configuration.

  Parameters are validated eagerly (the method's own checks, with concrete
  values) once per distinct value set; then the method's pure ``compute`` runs
  under ``jax.jit``. Numeric parameters whose value varies between tensors
  (gradients, filters) are traced arguments, so per-layer values don't
  recompile; the others are static. If the method needs a traced parameter
  concrete, it switches to static parameters for the rest of the run.
  """

  def __init__(self, method: Any, tasks: list[TensorTask], check_finite: bool):
    self.method = method
    self.check_finite = check_finite
    self.traced = True
    self._fns: dict[Any, Any] = {}
    self._resolved: dict[Any, tuple[dict, dict]] = {}
    first_m: dict[str, Any] = {}
    first_g: dict[str, Any] = {}
    varying: set[str] = set()
    for t in tasks:
      for k, v in t.model_params.items():
        if first_m.setdefault(k, v) != v:
          varying.add(k)
      for k, v in t.global_params.items():
        if first_g.setdefault(k, v) != v:
          varying.add(k)
    self.varying = varying

  def resolve(self, task: TensorTask, where: str) -> tuple[dict, dict]:
    """The method's resolved (defaults filled, validated) parameters for a task."""
    rkey = (task.base is not None, len(task.models),
            tuple(sorted((k, _hashable(v)) for k, v in task.model_params.items())),
            tuple(sorted((k, _hashable(v)) for k, v in task.global_params.items())))
    got = self._resolved.get(rkey)
    if got is not None:
      return got
    m = self.method
    mp = {k: list(v) for k, v in task.model_params.items()}
    gp = dict(task.global_params)
    try:
      if hasattr(m, "resolve_params"):
        if hasattr(m, "validate_inputs"):
          m.validate_inputs(object() if task.base is not None else None,
                            [None] * len(task.models), name=task.name)
        mp, gp = m.resolve_params(len(task.models), mp, gp, name=task.name)
        if getattr(m, "check", None) is not None:
          m.check(len(task.models), mp, gp, task.name)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    self._resolved[rkey] = (mp, gp)
    return mp, gp

  def _fn(self, has_base: bool, n: int, ms, gs, mnames, gnames, compute, out_dtype):
    cache_key = (has_base, n, ms, gs, mnames, gnames, compute, out_dtype, self.traced)
    fn = self._fns.get(cache_key)
    if fn is not None:
      return fn
    method, check = self.method, self.check_finite
    direct = getattr(method, "compute", None)

    def merge(base, models, mvals, gvals, key):
      inputs = ([base] if has_base else []) + list(models)
      finite = (jnp.stack([jnp.all(jnp.isfinite(x)) for x in inputs]) if check else
                jnp.ones((len(inputs),), bool))
      mp = {k: list(v) for k, v in ms}
      mp.update({k: [mvals[i][j] for j in range(n)] for i, k in enumerate(mnames)})
      gp = dict(gs)
      gp.update({k: gvals[i] for i, k in enumerate(gnames)})
      b = base.astype(compute) if has_base else None
      ms_ = [m.astype(compute) for m in models]
      if direct is not None:
        out = direct(b, ms_, mp, gp, key)
      else:
        out = method.merge_tensor(b, ms_, model_params=mp, global_params=gp, key=key,
                                  check_finite=False)
      out = out.astype(out_dtype)
      out_ok = jnp.all(jnp.isfinite(out)) if check else jnp.array(True)
      return out, finite, out_ok

    fn = jax.jit(merge)
    self._fns[cache_key] = fn
    return fn

  def __call__(self, task: TensorTask, base, models, compute, out_dtype, key, where: str):
    mp, gp = self.resolve(task, where)
    while True:
      trace = self.varying if self.traced else set()
      mt = {k: v for k, v in mp.items() if k in trace and all(_is_num(x) for x in v)}
      gt = {k: v for k, v in gp.items() if k in trace and _is_num(v)}
      ms = tuple(sorted((k, _hashable(v)) for k, v in mp.items() if k not in mt))
      gs = tuple(sorted((k, _hashable(v)) for k, v in gp.items() if k not in gt))
      mnames, gnames = tuple(sorted(mt)), tuple(sorted(gt))
      fn = self._fn(task.base is not None, len(models), ms, gs, mnames, gnames, compute, out_dtype)
      mvals = tuple(jnp.asarray(mt[k], jnp.float32) for k in mnames)
      gvals = tuple(jnp.asarray(gt[k], jnp.float32) for k in gnames)
      try:
        return fn(base, tuple(models), mvals, gvals, key)
      except _TRACE_ERRORS:
        if not self.traced or not (mnames or gnames):
          raise
        self.traced = False  # this method needs concrete parameters: recompile statically
      except ValueError as e:
        raise ValueError(f"{where}: tensor {task.name!r}: {e}") from None


class _ByteBudget:
  """Bounds the bytes read ahead but not yet merged (one item may always go)."""

  def __init__(self, limit: int):
    self.limit, self.used = limit, 0
    self.cond = threading.Condition()

  def acquire(self, n: int, stop: threading.Event) -> bool:
    with self.cond:
      while self.used and self.used + n > self.limit:
        if stop.is_set():
          return False
        self.cond.wait(0.1)
      self.used += n
      return True

  def release(self, n: int) -> None:
    with self.cond:
      self.used -= n
      self.cond.notify_all()


def _prefetch(tasks, readers, align, base_ref, out_q: queue.Queue, stop: threading.Event,
              budget: _ByteBudget):
  """Producer thread: reads the inputs of each task into fresh buffers."""
  def put(item) -> bool:
    while not stop.is_set():
      try:
        out_q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  files: dict[Any, Any] = {}

  def read(model: str, name: str) -> np.ndarray:
    # One pread-style copy into a fresh buffer (no mmap: the page cache is not counted in the
    # process's RSS and the disk read happens here, in this thread, not in the compute thread).
    reader = readers[model]
    spec = reader.spec(name)
    path, offset = getattr(spec, "file", None), getattr(spec, "offset", None)
    if path is None or offset is None:
      return np.array(reader.read(name))
    buf = np.empty(spec.nbytes, np.uint8)
    if spec.nbytes:
      f = files.get(path)
      if f is None:
        f = files[path] = open(path, "rb")  # pylint: disable=consider-using-with
      f.seek(offset)
      got = f.readinto(memoryview(buf))
      if got != spec.nbytes:
        raise ValueError(f"{path}: tensor {name!r}: short read ({got} of {spec.nbytes} bytes).")
    return buf.view(spec.dtype).reshape(spec.shape)

  try:
    for task in tasks:
      if stop.is_set():
        return
      arrays = {}
      nbytes = 0
      want = sum(readers[m].spec(n).nbytes for m, n in task.inputs)
      if not budget.acquire(want, stop):
        return
      for model, name in task.inputs:
        a = read(model, name)
        nbytes += a.nbytes
        arrays[(model, name)] = a
      if task.vocab and align is not None:
        by_model = align.align({m: arrays[(m, n)] for m, n in task.inputs}, base_ref)
        arrays = {(m, n): by_model[m] for m, n in task.inputs}
      if not put((task, arrays, want)):
        return
    put(None)
  except BaseException as e:  # pylint: disable=broad-except
    put(e)
  finally:
    for f in files.values():
      f.close()


def plan_checkpoints(recipe: str | Path | Mapping[str, Any] | Recipe) -> list[TensorTask]:
  """The per-tensor plan of a recipe over its checkpoints (headers only; nothing merged).

  Raises the same input errors as :func:`merge_checkpoints` (tensor sets,
  shapes, vocabularies, unknown method or parameter).
  """
  recipe = load_recipe(recipe)
  from jaxparams.merge.registry import get_method  # pylint: disable=import-outside-toplevel
  method = get_method(recipe.merge_method)
  folders = {ref: recipe.resolve_model(ref) for ref in recipe.model_names()}
  with contextlib.ExitStack() as stack:
    readers = {ref: stack.enter_context(open_checkpoint(p)) for ref, p in folders.items()}
    return plan_merge(recipe, readers, method)


def _progress(console, enabled: bool, method: str):
  from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                             TimeElapsedColumn, TimeRemainingColumn)
  return Progress(
      TextColumn(f"[bold]merge[/] {method}"), BarColumn(), MofNCompleteColumn(),
      TextColumn("{task.fields[tps]:.1f} tensors/s"), TextColumn("{task.fields[gbps]:.2f} GB/s"),
      TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled,
      transient=False)


def _np_dtype(name: str | None):
  return None if name is None else jnp.dtype(name)


def merge_checkpoints(recipe: str | Path | Mapping[str, Any] | Recipe, out_dir: str | Path, *,
                      key: jax.Array | None = None, seed: int = 0, overwrite: bool = False,
                      max_shard_bytes: int | float | str = 5e9, allow_nonfinite: bool = False,
                      copy_tokenizer: bool = True, prefetch: int = 2,
                      prefetch_bytes: int | float | str = 2e9, progress: bool = True,
                      console: Any = None, method: Any = None, shard: bool | None = None,
                      shard_min_bytes: int = 1 << 24) -> dict[str, Any]:
  """Merges HF safetensors checkpoints as a mergekit recipe says, streaming.

  Args:
    recipe: a mergekit YAML path, an ml-collections ``.py`` config, a dict or
      a :class:`~jaxparams.merge.recipe.Recipe`.
    out_dir: the output folder (created atomically).
    key: PRNG key for random methods; ``jax.random.key(seed)`` by default.
    seed: used when ``key`` is ``None``.
    overwrite: replace an existing ``out_dir``.
    max_shard_bytes: output shard size (bytes, or ``'5GB'``-style).
    allow_nonfinite: don't refuse NaN/Inf in inputs or outputs.
    copy_tokenizer: copy tokenizer files next to the output.
    prefetch: how many tensors' inputs the reader thread may read ahead.
    prefetch_bytes: and how many bytes at most (one tensor always may).
    progress: show a rich progress bar (tensors/s, GB/s).
    console: a ``rich.console.Console`` (a new one by default).
    method: a ``MergeMethod`` to use instead of the registry's.
    shard: split tensors of at least ``shard_min_bytes`` along axis 0 across
      all devices (``None``: only when there are several GPUs/TPUs).
    shard_min_bytes: smallest tensor (bytes) worth sharding.

  Returns:
    A summary dict: ``tensors``, ``bytes_read``, ``bytes_written``, ``seconds``,
    ``out_dir``, ``layers`` (output layer count).

  Raises:
    FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
    FileNotFoundError: a model folder is missing.
    ValueError: bad recipe, unknown method/parameter, mismatched tensor sets or
      shapes, differing vocabularies without ``tokenizer_source``, NaN/Inf,
      pickle checkpoints.
  """
  t0 = time.perf_counter()
  recipe = load_recipe(recipe)
  where = recipe.source or "recipe"
  out_dir = Path(out_dir)
  check_output_dir(out_dir, overwrite)
  if method is None:
    from jaxparams.merge.registry import get_method  # pylint: disable=import-outside-toplevel
    method = get_method(recipe.merge_method)
  if key is None:
    key = jax.random.key(seed)
  folders = {ref: recipe.resolve_model(ref) for ref in recipe.model_names()}
  with contextlib.ExitStack() as stack:
    readers = {ref: stack.enter_context(open_checkpoint(p)) for ref, p in folders.items()}
    tasks = plan_merge(recipe, readers, method)
    base_ref = recipe.base_model
    align = None
    if recipe.tokenizer_source is not None:
      from jaxparams.merge.vocab import build_alignment  # pylint: disable=import-outside-toplevel
      align = build_alignment(recipe.tokenizer_source, folders, base_ref,
                              recipe.pad_to_multiple_of)
    compiler = _Compiler(method, tasks, check_finite=not allow_nonfinite)
    sharding = _make_sharding(shard, shard_min_bytes)
    random = bool(getattr(method, "random", False))
    compute_req = _np_dtype(recipe.dtype)
    out_req = _np_dtype(recipe.out_dtype)
    from jaxparams.merge.plan import count_layers  # pylint: disable=import-outside-toplevel
    n_layers = count_layers([t.name for t in tasks])

    if console is None:
      from rich.console import Console  # pylint: disable=import-outside-toplevel
      console = Console(stderr=True)
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    budget = _ByteBudget(parse_size(prefetch_bytes))
    reader = threading.Thread(target=_prefetch,
                              args=(tasks, readers, align, base_ref, q, stop, budget),
                              daemon=True, name="jaxparams-merge-prefetch")
    bytes_read = 0
    done = 0
    try:
      with SafetensorsWriter(out_dir, max_shard_bytes=parse_size(max_shard_bytes),
                             overwrite=overwrite) as writer, \
          _progress(console, progress, recipe.merge_method) as bar:
        bar_task = bar.add_task("merge", total=len(tasks), tps=0.0, gbps=0.0)
        reader.start()
        t_start = time.perf_counter()
        while True:
          item = q.get()
          if item is None:
            break
          if isinstance(item, BaseException):
            raise item
          task, arrays, nbytes = item
          out = _merge_one(task, arrays, compiler, compute_req, out_req, key, random, where,
                           allow_nonfinite, sharding)
          del arrays
          budget.release(nbytes)
          writer.add(task.name, out)
          bytes_read += nbytes
          done += 1
          dt = max(time.perf_counter() - t_start, 1e-9)
          bar.update(bar_task, advance=1, tps=done / dt, gbps=bytes_read / dt / 1e9)
        _write_side_files(writer, recipe, folders, align, n_layers, copy_tokenizer, tasks)
      bytes_written = writer.total_bytes
    finally:
      stop.set()
      if reader.is_alive():
        reader.join(timeout=5)
  return {"tensors": done, "bytes_read": bytes_read, "bytes_written": bytes_written,
          "seconds": time.perf_counter() - t0, "out_dir": str(out_dir), "layers": n_layers}


def _make_sharding(shard: bool | None, min_bytes: int):
  """(NamedSharding over all devices along axis 0, min bytes) or None."""
  devices = jax.devices()
  if shard is None:
    shard = len(devices) > 1 and jax.default_backend() in ("gpu", "tpu")
  if not shard or len(devices) < 2:
    return None
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")), len(devices), min_bytes


def _place(arrays: list, sharding):
  """Shards large tensors along axis 0 across devices (when it divides evenly)."""
  if sharding is None:
    return arrays
  spec, n, min_bytes = sharding
  a0 = arrays[0]
  if a0.ndim == 0 or a0.shape[0] % n or a0.nbytes < min_bytes:
    return arrays
  return [jax.device_put(a, spec) for a in arrays]


def _merge_one(task: TensorTask, arrays, compiler: _Compiler, compute_req, out_req, key, random,
               where, allow_nonfinite, sharding=None):
  base = arrays[task.base] if task.base is not None else None
  models = [arrays[m] for m in task.models]
  inputs = ([base] if base is not None else []) + models
  names = list(task.inputs)
  if not all(jnp.issubdtype(a.dtype, jnp.floating) for a in inputs):
    # Integer / bool buffers: copied when identical (as mergekit does).
    for (m, _), a in zip(names[1:], inputs[1:]):
      if a.shape != inputs[0].shape or not np.array_equal(a, inputs[0]):
        raise ValueError(f"{where}: non-float tensor {task.name!r} differs between "
                         f"{names[0][0]!r} and {m!r}; it cannot be merged.")
    return inputs[0]
  compute = compute_req or jnp.result_type(*[a.dtype for a in inputs])
  out_dtype = out_req or compute
  k = tensor_key(key, task.name) if random else None
  if sharding is not None:
    placed = _place(([base] if base is not None else []) + models, sharding)
    if base is not None:
      base, models = placed[0], placed[1:]
    else:
      models = placed
  out, finite, out_ok = compiler(task, base, models, jnp.dtype(compute), jnp.dtype(out_dtype), k,
                                 where)
  if not allow_nonfinite:
    finite = np.asarray(finite)
    if not finite.all():
      bad = [names[i] for i in np.flatnonzero(~finite)]
      raise ValueError(f"{where}: tensor {bad[0][1]!r} of model {bad[0][0]!r} contains NaN or "
                       "Inf; fix the checkpoint or pass allow_nonfinite=True "
                       "(--allow-nonfinite).")
    if not bool(out_ok):
      raise ValueError(f"{where}: merging tensor {task.name!r} produced NaN or Inf "
                       f"(merge_method {getattr(compiler.method, 'name', '?')!r}).")
  return np.asarray(out)


def _write_side_files(writer: SafetensorsWriter, recipe: Recipe, folders, align, n_layers: int,
                      copy_tokenizer: bool, tasks) -> None:
  """config.json (layer count, vocab size, dtype updated) and tokenizer files."""
  import json  # pylint: disable=import-outside-toplevel
  refs = recipe.model_names()
  cfg_src = recipe.base_model or refs[0]
  if recipe.slices:
    cfg_src = recipe.slices[0].base_model or recipe.base_model or recipe.slices[0].sources[0].model
  cfg_path = Path(folders[cfg_src]) / "config.json"
  if Path(folders[cfg_src]).is_dir() and cfg_path.is_file():
    cfg = json.loads(cfg_path.read_text())
    if recipe.slices:
      for k in ("num_hidden_layers", "n_layer", "num_layers"):
        if k in cfg:
          cfg[k] = n_layers
    if align is not None and "vocab_size" in cfg:
      cfg["vocab_size"] = align.rows
    out_dt = recipe.out_dtype or recipe.dtype
    if out_dt:
      for k in ("torch_dtype", "dtype"):
        if k in cfg:
          cfg[k] = out_dt
    writer.write_json("config.json", cfg)
  if not copy_tokenizer:
    return
  tok_src = recipe.base_model or refs[0]
  if recipe.tokenizer_source not in (None, "base", "union"):
    tok_src = recipe.tokenizer_source
  folder = Path(folders[tok_src])
  if folder.is_dir():
    writer.copy_from(folder, TOKENIZER_FILES + _EXTRA_FILES)
  if align is not None and align.tokenizer is not None:
    align.tokenizer.save(str(writer.folder_tmp / "tokenizer.json"))
  if recipe.chat_template:
    tc_path = writer.folder_tmp / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.is_file() else {}
    tc["chat_template"] = recipe.chat_template
    writer.write_json("tokenizer_config.json", tc)
