"""Data-parallel language-model trainer with mid-training growth, exact resume and JSONL logs.

``train(config, workdir)`` trains a byte-level LM (TokenFormer or Llama, :mod:`.families`) on the
standard library's source (:mod:`.data`):

* **Devices.** A ``Mesh`` over all devices with axes ``('data', 'model')``; the batch is sharded
  on ``'data'``; params and optimizer state are replicated, or with ``config.mesh.model > 1``
  sharded along ``'model'`` on their last axis that divides evenly (else replicated). Multi-host
  launches (detected from the environment, see :func:`maybe_initialize_distributed`) call
  ``jax.distributed.initialize()`` first; a single process skips it.
* **Optimizer.** AdamW (optax ``scale_by_adam`` + ``add_decayed_weights`` on matrices only) after
  global-norm clipping; the learning rate (:func:`learning_rate`: linear warmup, then cosine decay
  to ``optim.end_lr_ratio * optim.lr``) is computed on the host from the step and passed to the
  jitted step, so compiled steps do not depend on ``num_steps`` and are memoised per
  (model config, optimizer, mesh, seq_len) -- repeated runs in one process reuse them.
* **Growth.** Before update ``s + 1`` for each ``s`` in ``config.growth.steps`` the growth hook
  (:mod:`.growth`) transforms the params and model config; the model, jitted step and shardings
  are rebuilt and the optimizer state is carried over (``config.growth.opt_state``). The loss of a
  fixed eval batch just before and just after growth goes to the JSONL (``event: growth``).
* **Checkpoints.** orbax, every ``checkpoint_every`` steps and at the end; resuming from
  ``workdir`` continues bit-exactly (params, optimizer state, step = data position, PRNG key).
  A checkpoint of a different config is refused.
* **Logs.** ``workdir/metrics.jsonl`` and ``workdir/loss.png``.
* **Memory-lean fine-tuning.** ``optim.name='mezo'`` trains with zeroth-order SPSA
  (:mod:`.zo`: two forward passes, perturbations regenerated from the step's key, no gradients
  and no optimizer state); ``backward.name='wtacrs'`` runs every Linear with a WTA-CRS sampled
  weight gradient (:mod:`.wtacrs`, through the model's ``dot=``).
* **In-memory fault tolerance.** ``snapshot.every=k`` snapshots params, optimizer state and PRNG
  key to host memory every ``k`` steps, asynchronously, XOR-parity coded over
  ``snapshot.nodes`` nodes (:mod:`.snapshot`); ``snapshot.fail_at=s`` simulates losing node
  ``snapshot.lose_node`` after step ``s``: its piece is rebuilt from parity, the state restored
  and training resumes from the snapshot step (bit-identical to an uninterrupted run).
* **Interrupts.** SIGINT / SIGTERM finish the current step, save a checkpoint and return
  (``TrainResult.interrupted`` holds the signal number); a second signal acts as usual.

Example (compiles for a few seconds, so skipped in doctests; the tests run the configs):
  >>> import importlib.util  # doctest: +SKIP
  >>> spec = importlib.util.spec_from_file_location('c', 'configs/tokenformer_lm.py')  # doctest: +SKIP
  >>> c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)  # doctest: +SKIP
  >>> result = train(c.get_config('runlocal'), '/tmp/tf_run')  # doctest: +SKIP
  >>> result.step, [r['event'] for r in result.records].count('growth')  # doctest: +SKIP
  (3, 1)
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxparams import prune
from jaxparams.train import checkpoint as ckpt_lib
from jaxparams.train import data as data_lib
from jaxparams.train import families
from jaxparams.train import growth as growth_lib
from jaxparams.train import logging as log_lib
from jaxparams.train import snapshot as snapshot_lib
# The pieces of a run, one file each; their public names are re-exported here as before.
from jaxparams.train.config import (BACKWARDS, OPTIMIZERS, ConfigError, check_config,
                                    default_config)
from jaxparams.train.mesh import count_params, make_mesh, maybe_initialize_distributed, put
from jaxparams.train.optim import OptimFeatures, learning_rate, optim_features
from jaxparams.train.step import BuiltModel, build_model, grow

__all__ = ["default_config", "check_config", "train", "TrainResult", "learning_rate",
           "maybe_initialize_distributed", "make_mesh", "ConfigError", "OPTIMIZERS", "BACKWARDS"]


@dataclasses.dataclass
class TrainResult:
  """What :func:`train` returns.

  Attributes:
    params: Final params (global ``jax.Array`` tree).
    model_config: Final model config (after growth).
    step: Number of completed updates.
    records: All JSONL records of the run (including those before a resume).
    workdir: The working directory.
    interrupted: The signal number if SIGINT/SIGTERM stopped the run (a checkpoint of ``step``
      was saved), else None.
  """
  params: Any
  model_config: Any
  step: int
  records: list[dict[str, Any]]
  workdir: pathlib.Path
  interrupted: int | None = None


def _on_signals(flag: list[int]) -> Callable[[], None]:
  """Installs SIGINT/SIGTERM handlers appending to ``flag``; returns the uninstaller.

  Only from the main thread (Python's rule); elsewhere signals keep their handlers. After the
  first signal the previous handler is back, so a second Ctrl-C interrupts at once.
  """
  if threading.current_thread() is not threading.main_thread():
    return lambda: None
  previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

  def handler(signum, frame):
    del frame
    flag.append(signum)
    for s, h in previous.items():
      signal.signal(s, h)

  for s in previous:
    signal.signal(s, handler)
  return lambda: [signal.signal(s, h) for s, h in previous.items()]


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          progress: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
  """Trains (or resumes) the run described by ``config`` in ``workdir``.

  Args:
    config: A trainer config (see :func:`default_config`).
    workdir: Directory for ``checkpoints/``, ``metrics.jsonl`` and ``loss.png``. If it holds a
      checkpoint, training resumes from the latest one.
    progress: Optional callback receiving every JSONL record as it is written (e.g. to print).

  Returns:
    A :class:`TrainResult`.

  Raises:
    ConfigError: (a ValueError) unknown config fields, a checkpoint written by another config, a
      batch size not divisible by the data-parallel size.
    ValueError: a growth step that cannot preserve the function.
  """
  check_config(config)
  signals: list[int] = []
  uninstall = _on_signals(signals)
  try:
    return _train(config, workdir, progress, signals)
  finally:
    uninstall()


def _check_batch_sizes(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  n_data = mesh.shape["data"]
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % n_data:
      raise ConfigError(f"config.{name}={config[name]} is not divisible by the data-parallel "
                       f"size {n_data} ({jax.device_count()} devices / mesh.model "
                       f"{config.mesh.model})")


def _load_corpus(config: ml_collections.ConfigDict) -> data_lib.Corpus:
  if config.data.corpus:
    return data_lib.load_named_corpus(config.data.corpus, config.data)
  return data_lib.load_corpus(root=config.data.root or None, max_bytes=config.data.max_bytes,
                              eval_percent=config.data.eval_percent)


@dataclasses.dataclass
class _State:
  """What a run carries from step to step (and what a checkpoint or snapshot holds)."""
  step: int
  model: BuiltModel
  params: Any
  opt_state: Any
  rng: np.ndarray


class _Log:
  """The JSONL metrics (and the ``progress`` callback): train records batched per interval."""

  def __init__(self, workdir: pathlib.Path, is_main: bool, progress, tokens_per_step: int,
               step: int, truncate_after_step: int):
    self.path = workdir / "metrics.jsonl"
    self.is_main = is_main
    self.progress = progress
    self.tokens_per_step = tokens_per_step
    self.writer = log_lib.MetricsWriter(self.path, enabled=is_main,
                                        truncate_after_step=truncate_after_step)
    self.pending: list[tuple[int, float, Any]] = []
    self.restart_clock(step)

  def restart_clock(self, step: int) -> None:
    """Starts a throughput interval at ``step``."""
    self.clock = (time.perf_counter(), step)

  def truncate_after(self, step: int) -> None:
    """Drops the records after ``step`` (a run that went back to a snapshot)."""
    self.writer = log_lib.MetricsWriter(self.path, enabled=self.is_main,
                                        truncate_after_step=step)

  def emit(self, record: dict[str, Any]) -> None:
    self.writer.write(record)
    if self.progress:
      self.progress(record)

  def add(self, step: int, lr: float, metrics: Any) -> None:
    self.pending.append((step, lr, metrics))

  def flush(self, params: Any) -> None:
    """Writes the pending train records (tokens_per_s: mean over the interval, compiles included)."""
    if not self.pending:
      return
    fetched = jax.device_get([m for _, _, m in self.pending])
    now = time.perf_counter()
    start, start_step = self.clock
    rate = (self.pending[-1][0] - start_step) * self.tokens_per_step / max(now - start, 1e-9)
    n_params = count_params(params)
    for (s, s_lr, _), m in zip(self.pending, fetched):
      self.emit({"event": "train", "step": s, "loss": float(m["loss"]),
                 "grad_norm": float(m["grad_norm"]), "lr": s_lr, "tokens": s * self.tokens_per_step,
                 "tokens_per_s": rate, "n_params": n_params})
    self.clock = (now, self.pending[-1][0])
    self.pending.clear()


def _start(config: ml_collections.ConfigDict, family: families.Family, build, mesh: Mesh,
           manager: Any, workdir: pathlib.Path) -> tuple[_State, int]:
  """A fresh run, or the newest intact checkpoint's; returns ``(state, records kept up to step)``.

  A damaged checkpoint (truncated data, empty or missing metadata, missing ``state/``) is
  skipped with one warning line and the previous step is restored
  (:func:`ckpt_lib.restore_newest_intact`); one of another config is refused.
  """

  def restore(step: int) -> _State:
    meta = ckpt_lib.restore_meta(manager, step)
    if not isinstance(meta, dict) or "step" not in meta or "model_config" not in meta:
      raise ValueError(f"metadata holds {type(meta).__name__}, not the run's meta record")
    try:
      ckpt_lib.check_fingerprint(meta, config, f"{workdir}/checkpoints/{step}")
    except ValueError as e:
      raise ckpt_lib.CheckpointRefused() from ConfigError(str(e))
    model = build(families.model_config_from_json(family, meta["model_config"]))
    abstract_params = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
    abstract = {
        "params": ckpt_lib.abstract_like(abstract_params, model.param_shardings),
        "opt_state": ckpt_lib.abstract_like(jax.eval_shape(model.init_opt, abstract_params),
                                            model.opt_shardings),
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, P())),
    }
    state = ckpt_lib.restore_state(manager, step, abstract)
    bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(state)
           if jax.process_count() == 1 and jnp.issubdtype(v.dtype, jnp.floating)
           and not bool(jnp.all(jnp.isfinite(v)))]
    if bad:
      raise ValueError(f"non-finite values in {bad[:3]}")
    rng = np.asarray(jax.device_get(state["rng"]))
    return _State(int(meta["step"]), model, state["params"], state["opt_state"], rng)

  found = ckpt_lib.restore_newest_intact(manager, restore)
  if found is None:
    model_config = families.model_config_from(family, config.model)
    model = build(model_config)
    rng = np.asarray(jax.random.PRNGKey(int(config.seed)))
    params = model.init_params(rng)
    if float(config.init.gg_nu) > 0:  # GG init, variance-matched to the model's own init
      params = jax.device_put(prune.gg_reinit(params, jax.random.fold_in(rng, 1),
                                              nu=float(config.init.gg_nu)), model.param_shardings)
    return _State(0, model, params, model.init_opt(params), rng), -1
  _, state = found
  return state, state.step


def _save(manager: Any, config: ml_collections.ConfigDict, family: families.Family, mesh: Mesh,
          s: _State) -> None:
  meta = {"step": s.step, "model_family": family.name,
          "model_config": families.model_config_to_json(s.model.config),
          "fingerprint": ckpt_lib.fingerprint(config),
          "config_fields": ckpt_lib.config_fields(config)}
  state = {"params": s.params, "opt_state": s.opt_state,
           "rng": put(s.rng, NamedSharding(mesh, P()))}
  if jax.process_count() == 1:
    state = jax.device_get(state)  # host copies: orbax then skips per-shard slicing programs
  ckpt_lib.save(manager, s.step, state, meta)


def _recover(s: _State, snapshotter: snapshot_lib.Snapshotter, lose_node: int, log: _Log) -> None:
  """Simulated loss of node ``lose_node``: rebuilds its piece, goes back to the snapshot."""
  snapshotter.lose(lose_node)
  snap_step, state = snapshotter.restore()
  # Through an XLA copy, so the buffers are laid out as the step's own outputs (arrays made
  # from host memory may alias it and round differently in vectorised reductions).
  s.params = jax.tree.map(jnp.copy, put(state["params"], s.model.param_shardings))
  s.opt_state = jax.tree.map(jnp.copy, put(state["opt_state"], s.model.opt_shardings))
  s.rng = np.asarray(state["rng"])
  log.truncate_after(snap_step)
  log.emit({"event": "recovered", "step": snap_step, "failed_at": s.step,
            "lost_node": lose_node, "rebuilt_bytes": snapshotter.bytes_per_node})
  s.step = snap_step
  log.restart_clock(s.step)


def _train(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
           progress: Callable[[dict[str, Any]], None] | None, signals: list[int]) -> TrainResult:
  maybe_initialize_distributed(config.distributed)
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  mesh = make_mesh(int(config.mesh.model))
  _check_batch_sizes(config, mesh)
  family = families.get_family(config.model.name)
  features: OptimFeatures = optim_features(config)
  build = lambda model_config: build_model(family.name, model_config, features, mesh,
                                           int(config.seq_len))
  corpus = _load_corpus(config)
  batch_s = NamedSharding(mesh, P("data"))
  eval_batch = put(data_lib.eval_batch(corpus, batch_size=config.eval_batch_size,
                                       seq_len=config.seq_len, seed=config.seed), batch_s)
  growth_steps = sorted(int(s) for s in config.growth.steps)
  hook = growth_lib.get_hook(config.growth.hook, family.name) if growth_steps else None

  manager = ckpt_lib.open_manager(workdir, keep=int(config.keep_checkpoints))
  s, kept_until = _start(config, family, build, mesh, manager, workdir)
  log = _Log(workdir, is_main, progress, int(config.batch_size) * int(config.seq_len), s.step,
             truncate_after_step=kept_until)
  if kept_until >= 0:  # resumed
    if progress:
      progress({"event": "resume", "step": s.step})
    log.writer.write({"event": "resume", "step": s.step})

  snap_every = int(config.snapshot.every)
  snapshotter = snapshot_lib.Snapshotter(int(config.snapshot.nodes)) if snap_every else None
  fail_at = int(config.snapshot.fail_at)
  saved_at = -1
  stop = min(int(config.stop_at_step) or int(config.num_steps), int(config.num_steps))
  while s.step < stop:
    if signals:
      break
    if s.step in growth_steps:
      log.flush(s.params)
      s.model, s.params, s.opt_state, record = grow(
          hook, s.model, s.params, s.opt_state, eval_batch, build,
          key=jax.random.fold_in(s.rng, s.step + 1), kwargs=config.growth.kwargs.to_dict(),
          opt_mode=config.growth.opt_state)
      log.emit({"event": "growth", "step": s.step, **record})
      log.restart_clock(s.step)
    batch = put(data_lib.train_batch(corpus, step=s.step, batch_size=config.batch_size,
                                     seq_len=config.seq_len, seed=config.seed), batch_s)
    lr = learning_rate(s.step, config.optim, int(config.num_steps))
    step_key = np.asarray(jax.random.fold_in(s.rng, s.step))  # host value: fine multi-process
    s.params, s.opt_state, metrics = s.model.train_step(s.params, s.opt_state, batch,
                                                        np.float32(lr), step_key)
    s.step += 1
    log.add(s.step, lr, metrics)
    if fail_at and s.step == fail_at and snapshotter.latest_step() is not None:
      log.flush(s.params)
      fail_at = 0  # one simulated failure per run
      _recover(s, snapshotter, int(config.snapshot.lose_node), log)
      continue
    if s.step % config.log_every == 0 or s.step == stop:
      log.flush(s.params)
    if (config.eval_every and s.step % config.eval_every == 0) or s.step == config.num_steps:
      log.emit({"event": "eval", "step": s.step,
                "eval_loss": float(s.model.eval_loss(s.params, eval_batch))})
    if s.step % config.checkpoint_every == 0 or s.step == stop:
      _save(manager, config, family, mesh, s)
      saved_at = s.step
    if snapshotter is not None and s.step % snap_every == 0:
      snapshotter.snapshot(s.step, {"params": s.params, "opt_state": s.opt_state, "rng": s.rng})
  if signals and s.step != saved_at:
    log.flush(s.params)
    _save(manager, config, family, mesh, s)
  if signals:
    log.emit({"event": "interrupted", "step": s.step, "signal": int(signals[0])})
  if snapshotter is not None:
    snapshotter.close()
  manager.close()

  records = log_lib.read_jsonl(workdir / "metrics.jsonl") if is_main else []
  if is_main and config.plot and s.step == config.num_steps:
    log_lib.plot_metrics(records, workdir / "loss.png",
                         title=f"{family.name} on stdlib bytes ({config.num_steps} steps)")
  return TrainResult(params=s.params, model_config=s.model.config, step=s.step, records=records,
                     workdir=workdir, interrupted=int(signals[0]) if signals else None)
