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
import functools
import math
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
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxparams import prune
from jaxparams.train import checkpoint as ckpt_lib
from jaxparams.train import data as data_lib
from jaxparams.train import families
from jaxparams.train import growth as growth_lib
from jaxparams.train import logging as log_lib
from jaxparams.train import snapshot as snapshot_lib
from jaxparams.train import wtacrs
from jaxparams.train import zo

__all__ = ["default_config", "check_config", "train", "TrainResult", "learning_rate",
           "maybe_initialize_distributed", "make_mesh", "ConfigError", "OPTIMIZERS", "BACKWARDS"]

OPTIMIZERS = ("adamw", "mezo")
BACKWARDS = ("exact", "wtacrs")


class ConfigError(ValueError):
  """A config the trainer cannot run (the CLI prints it as one line and exits with code 2)."""


def default_config() -> ml_collections.ConfigDict:
  """All trainer fields with defaults; config files start from it and override.

  Fields: ``seed``, ``num_steps``, ``batch_size`` (global, sequences), ``seq_len``,
  ``eval_batch_size``, ``eval_every`` (0 = only at growth and the end), ``log_every``,
  ``checkpoint_every``, ``keep_checkpoints``, ``stop_at_step`` (0 = never: stop early as if
  pre-empted, for tests), ``plot``, ``distributed`` (``'auto'``/``'on'``/``'off'``),
  ``mesh.model`` (size of the ``'model'`` axis), ``data.{max_bytes, eval_percent, root, corpus}``
  (``corpus``: optional ``'module:function'`` returning a :class:`~jaxparams.train.data.Corpus`
  of token ids), ``optim.{name, lr, warmup_steps, end_lr_ratio, weight_decay, b1, b2,
  grad_clip}`` (``name``: ``'adamw'`` or ``'mezo'``), ``zo.{eps, n_samples}`` (MeZO),
  ``backward.{name, ratio, min_rows}`` (``'exact'`` or ``'wtacrs'``),
  ``snapshot.{every, nodes, fail_at, lose_node}`` (in-memory snapshots, 0 = off),
  ``pruning.{sparsity, begin_step, end_step, update_freq, power, distribution}`` (gradual
  magnitude pruning, 0 = off), ``init.gg_nu`` (0 = the model's own init; > 0 redraws every
  matrix from a generalized Gaussian of that shape with the same variance,
  :func:`jaxparams.prune.gg_reinit`),
  ``model.name`` plus the family's config fields, ``growth.{steps, hook, kwargs, opt_state}``.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_steps = 1000
  c.batch_size = 32
  c.seq_len = 128
  c.eval_batch_size = 32
  c.eval_every = 100
  c.log_every = 10
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.stop_at_step = 0
  c.plot = True
  c.distributed = "auto"
  c.mesh = ml_collections.ConfigDict(dict(model=1))
  c.data = ml_collections.ConfigDict(dict(max_bytes=4_000_000, eval_percent=5, root="",
                                          corpus=""))
  c.optim = ml_collections.ConfigDict(dict(name="adamw", lr=3e-3, warmup_steps=100,
                                           end_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95,
                                           grad_clip=1.0))
  c.zo = ml_collections.ConfigDict(dict(eps=1e-3, n_samples=1))
  c.backward = ml_collections.ConfigDict(dict(name="exact", ratio=0.3, min_rows=1))
  c.snapshot = ml_collections.ConfigDict(dict(every=0, nodes=4, fail_at=0, lose_node=1))
  c.pruning = ml_collections.ConfigDict(dict(sparsity=0.0, begin_step=0, end_step=0,
                                             update_freq=10, power=3.0,
                                             distribution="uniform"))
  c.init = ml_collections.ConfigDict(dict(gg_nu=0.0))
  c.model = ml_collections.ConfigDict(dict(name="tokenformer"))
  c.growth = ml_collections.ConfigDict(dict(steps=(), hook="", opt_state="pad"))
  c.growth.kwargs = ml_collections.ConfigDict()
  return c


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`ConfigError` (a ValueError) naming any field the trainer does not know.

  ``config.model`` and ``config.growth.kwargs`` are checked against the model family's config
  dataclass and the growth hook's arguments.
  """
  try:
    _check_config(config)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _check_config(config: ml_collections.ConfigDict) -> None:
  def walk(node: Any, ref: Any, prefix: str) -> None:
    for key in node.keys():
      path = f"{prefix}.{key}"
      if path in ("config.model", "config.growth.kwargs"):
        continue
      if key not in ref:
        raise ValueError(f"unknown config field {path!r}; valid fields of {prefix}: "
                         f"{', '.join(sorted(ref.keys()))}")
      if isinstance(ref[key], ml_collections.ConfigDict):
        if not isinstance(node[key], (ml_collections.ConfigDict, dict)):
          raise ValueError(f"config field {path!r} must be a ConfigDict, found {node[key]!r}")
        walk(node[key], ref[key], path)

  walk(config, default_config(), "config")
  fam = families.get_family(config.model.name)
  families.model_config_from(fam, config.model)
  if config.growth.steps:
    hook = growth_lib.get_hook(config.growth.hook, fam.name)
    growth_lib.check_kwargs(hook, config.growth.kwargs.to_dict())
    if config.growth.opt_state not in growth_lib.OPT_STATE_MODES:
      raise ValueError(f"unknown config.growth.opt_state {config.growth.opt_state!r}; valid: "
                       f"{', '.join(growth_lib.OPT_STATE_MODES)}")
  for name in ("num_steps", "batch_size", "seq_len", "eval_batch_size", "log_every",
               "checkpoint_every", "keep_checkpoints"):
    if int(config[name]) <= 0:
      raise ValueError(f"config.{name} must be positive, found {config[name]}")
  if config.optim.name not in OPTIMIZERS:
    raise ValueError(f"unknown config.optim.name {config.optim.name!r}; valid: "
                     f"{', '.join(OPTIMIZERS)}")
  if config.optim.name == "mezo":
    zo.ZOConfig(eps=float(config.zo.eps), n_samples=int(config.zo.n_samples))
  if config.backward.name not in BACKWARDS:
    raise ValueError(f"unknown config.backward.name {config.backward.name!r}; valid: "
                     f"{', '.join(BACKWARDS)}")
  if config.backward.name == "wtacrs":
    wtacrs.num_rows(1, float(config.backward.ratio))
    fields = {f.name for f in dataclasses.fields(fam.make)} if dataclasses.is_dataclass(
        fam.make) else set()
    if "dot" not in fields:
      raise ValueError(f"config.backward.name='wtacrs' needs a model with a dot= injection "
                       f"point; model family {fam.name!r} has none")
    if config.optim.name == "mezo":
      raise ValueError("config.backward.name='wtacrs' has no effect with optim.name='mezo' "
                       "(no backward pass)")
  prn = config.pruning
  if float(prn.sparsity):
    if not 0.0 < float(prn.sparsity) < 1.0:
      raise ValueError(f"config.pruning.sparsity must be in [0, 1), found {prn.sparsity}")
    if prn.distribution not in ("uniform", "erk"):
      raise ValueError(f"unknown config.pruning.distribution {prn.distribution!r}; valid: "
                       "uniform, erk")
    if int(prn.end_step) <= int(prn.begin_step) or int(prn.update_freq) < 1:
      raise ValueError(f"config.pruning needs end_step > begin_step and update_freq >= 1, found "
                       f"begin_step={prn.begin_step}, end_step={prn.end_step}, "
                       f"update_freq={prn.update_freq}")
    if config.growth.steps or config.optim.name == "mezo":
      raise ValueError("config.pruning cannot be combined with growth.steps or optim.name='mezo'")
  if float(config.init.gg_nu) < 0:
    raise ValueError(f"config.init.gg_nu must be >= 0 (0 = the model's own init), found "
                     f"{config.init.gg_nu}")
  snap = config.snapshot
  if int(snap.every) < 0 or int(snap.fail_at) < 0:
    raise ValueError(f"config.snapshot.every and fail_at must be >= 0, found {snap.every}, "
                     f"{snap.fail_at}")
  if int(snap.every):
    if int(snap.nodes) < 2 or not 0 <= int(snap.lose_node) < int(snap.nodes):
      raise ValueError(f"config.snapshot needs nodes >= 2 and 0 <= lose_node < nodes, found "
                       f"nodes={snap.nodes}, lose_node={snap.lose_node}")
  if int(snap.fail_at):
    if not int(snap.every) or int(snap.fail_at) < int(snap.every):
      raise ValueError(f"config.snapshot.fail_at={snap.fail_at} needs a snapshot before it "
                       f"(snapshot.every={snap.every})")
    if config.growth.steps:
      raise ValueError("config.snapshot.fail_at cannot be combined with growth.steps (the "
                       "snapshot would hold the pre-growth shapes)")


def _multi_process_env() -> bool:
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  for var in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
    try:
      if int(env.get(var, "1")) > 1:
        return True
    except ValueError:
      pass
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize_distributed(mode: str = "auto") -> bool:
  """Calls ``jax.distributed.initialize()`` for multi-process launches; returns whether it did.

  ``mode='auto'`` detects a multi-process launch from the environment (``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES``, SLURM/Open MPI/PMI task counts > 1, multi-host TPU worker lists);
  ``'on'`` always initialises (cluster auto-detection by JAX), ``'off'`` never.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"config.distributed must be 'auto', 'on' or 'off', found {mode!r}")
  if mode == "off" or jax.distributed.is_initialized():
    return False
  if mode == "on" or _multi_process_env():
    jax.distributed.initialize()
    return True
  return False


def make_mesh(model_axis: int = 1) -> Mesh:
  """A ``('data', 'model')`` mesh over all devices (``model_axis`` devices on ``'model'``)."""
  devices = np.asarray(jax.devices())
  if model_axis < 1 or devices.size % model_axis:
    raise ValueError(f"config.mesh.model={model_axis} must divide the device count {devices.size}")
  return Mesh(devices.reshape(devices.size // model_axis, model_axis), ("data", "model"))


def _leaf_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
  m = mesh.shape["model"]
  if m > 1:
    for axis in range(len(shape) - 1, -1, -1):
      if len(shape) >= 2 and shape[axis] % m == 0:
        return NamedSharding(mesh, P(*([None] * axis + ["model"])))
  return NamedSharding(mesh, P())


def _shardings(mesh: Mesh, tree: Any) -> Any:
  return jax.tree.map(lambda x: _leaf_sharding(mesh, tuple(x.shape)), tree)


def _put(tree: Any, shardings: Any) -> Any:
  """Host (numpy-convertible) tree -> global arrays (works on several processes too)."""
  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


def _host(tree: Any) -> Any:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _count(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def learning_rate(step: int, optim: Any, num_steps: int) -> float:
  """Linear warmup to ``lr`` then cosine decay to ``end_lr_ratio * lr`` at ``num_steps``.

  ``step`` is the number of completed updates (the rate used by update ``step + 1``). Warmup
  update ``s + 1`` uses ``lr * (s + 1) / warmup_steps``, so the first update is never wasted on a
  rate of 0 and update ``warmup_steps`` reaches the full rate.

  Example:
    >>> import ml_collections
    >>> o = ml_collections.ConfigDict(dict(lr=1.0, warmup_steps=10, end_lr_ratio=0.1))
    >>> [round(learning_rate(s, o, 110), 3) for s in (0, 4, 9, 60, 110)]
    [0.1, 0.5, 1.0, 0.55, 0.1]
  """
  warmup = min(int(optim.warmup_steps), max(num_steps - 1, 0))
  if step < warmup:
    return float(optim.lr) * (step + 1) / warmup
  frac = min((step - warmup) / max(num_steps - warmup, 1), 1.0)
  end = float(optim.lr) * float(optim.end_lr_ratio)
  return end + (float(optim.lr) - end) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _optim_key(config: Any) -> tuple[Any, ...]:
  optim = config.optim
  key = tuple(float(optim[k]) for k in ("grad_clip", "b1", "b2", "weight_decay"))
  if optim.name == "mezo":
    return key + ("mezo", float(config.zo.eps), int(config.zo.n_samples))
  if config.backward.name == "wtacrs":
    key = key + ("wtacrs", float(config.backward.ratio), int(config.backward.min_rows))
  prn = config.get("pruning")
  if prn is not None and float(prn.sparsity):
    key = key + (("prune", float(prn.sparsity), int(prn.begin_step), int(prn.end_step),
                  int(prn.update_freq), float(prn.power), str(prn.distribution)),)
  return key


def _pruning(optim_key: tuple[Any, ...]):
  """``(targets_fn, schedule)`` of gradual magnitude pruning, or None (``config.pruning``)."""
  last = optim_key[-1]
  if not (isinstance(last, tuple) and last[:1] == ("prune",)):
    return None
  _, sparsity, begin, end, freq, power, dist = last
  schedule = prune.PolynomialSchedule(begin_step=begin, end_step=end, update_freq=freq,
                                      power=power)
  spread = prune.erk if dist == "erk" else prune.uniform
  return (lambda params: spread(params, sparsity, where=prune.default_prune_where)), schedule


def _make_optimizer(optim_key: tuple[Any, ...]) -> optax.GradientTransformation:
  """AdamW without its learning rate (the step multiplies by ``-lr``, passed in per step).

  ``clip_by_global_norm -> scale_by_adam -> add_decayed_weights(matrices only)``; with the
  final ``-lr`` scaling this is ``optax.adamw`` after clipping. Keeping the schedule out of the
  optimizer makes the compiled step independent of ``num_steps``.
  """
  clip, b1, b2, wd = optim_key[:4]
  if optim_key[4:5] == ("mezo",):  # no optimizer state: only a step counter (checkpointable)
    return optax.GradientTransformation(lambda p: {"count": jnp.zeros([], jnp.int32)}, None)
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
  return optax.chain(optax.clip_by_global_norm(clip), optax.scale_by_adam(b1=b1, b2=b2),
                     optax.add_decayed_weights(wd, mask=decay_mask))


@dataclasses.dataclass
class _Model:
  """Everything that changes when the model grows: config, module, shardings, jitted fns."""
  config: Any
  module: Any
  tx: optax.GradientTransformation
  param_shardings: Any
  opt_shardings: Any
  init_params: Any
  init_opt: Any
  train_step: Any
  eval_loss: Any


@functools.lru_cache(maxsize=16)
def _build(family_name: str, model_config: Any, optim_key: tuple[Any, ...], mesh: Mesh,
           seq_len: int) -> _Model:
  """Builds (and memoises, so repeated runs in one process reuse compilations) the jitted fns.

  ``train_step(params, opt_state, batch, lr, key)``: ``key`` drives MeZO's perturbations and
  WTA-CRS's row sampling (unused by exact AdamW).
  """
  make = families.get_family(family_name).make
  module = make(model_config)
  tx = _make_optimizer(optim_key)
  dummy = jnp.zeros((1, seq_len), jnp.int32)
  init_fn = lambda k: module.init(k, dummy)["params"]
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  pruning = _pruning(optim_key)
  if pruning is not None:  # masks live in the optimizer state (jaxparams.prune.wrap_optax)
    targets, schedule = pruning[0](abstract), pruning[1]
    tx = prune.wrap_optax(tx, targets, schedule=schedule, fold=False)
  ps = _shardings(mesh, abstract)
  os_ = _shardings(mesh, jax.eval_shape(tx.init, abstract))
  batch_s = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())

  def loss_fn(params, batch, mod=module):
    logits = mod.apply({"params": params}, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch[:, 1:]).mean()

  def step(params, opt_state, batch, lr, key):
    if optim_key[4:5] == ("wtacrs",):
      ratio, min_rows = optim_key[5:7]
      mod = make(model_config, dot=wtacrs.make_dot(key, ratio=ratio, min_rows=min_rows))
      loss, grads = jax.value_and_grad(functools.partial(loss_fn, mod=mod))(params, batch)
    else:
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), params, updates)
    if pruning is not None:
      params, opt_state = prune.post_update(params, opt_state, targets, schedule=schedule)
    return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  def zo_step(params, opt_state, batch, lr, key):
    cfg = zo.ZOConfig(eps=optim_key[5], n_samples=optim_key[6], weight_decay=optim_key[3])
    params, m = zo.mezo_step(loss_fn, params, key, batch, lr=lr, config=cfg)
    return params, {"count": opt_state["count"] + 1}, {"loss": m["loss"],
                                                      "grad_norm": m["projected_grad"]}

  if optim_key[4:5] == ("mezo",):
    step = zo_step  # noqa: F811

  train_step = jax.jit(step, in_shardings=(ps, os_, batch_s, repl, repl),
                       out_shardings=(ps, os_, repl), donate_argnums=(0, 1))
  eval_loss = jax.jit(loss_fn, in_shardings=(ps, batch_s), out_shardings=repl)
  init_params = jax.jit(init_fn, out_shardings=ps)
  init_opt = jax.jit(tx.init, in_shardings=(ps,), out_shardings=os_)
  return _Model(model_config, module, tx, ps, os_, init_params, init_opt, train_step, eval_loss)


def _grow(hook: growth_lib.GrowthHook, model: _Model, params: Any, opt_state: Any,
          eval_batch: jax.Array, build: Callable[[Any], _Model], *, key: jax.Array,
          kwargs: dict[str, Any], opt_mode: str) -> tuple[_Model, Any, Any, dict[str, Any]]:
  """Applies a growth hook; returns the rebuilt model, params, opt state and the JSONL record."""
  loss_before = float(model.eval_loss(params, eval_batch))
  n_before = _count(params)
  new_params, new_config = growth_lib.apply_hook(hook, _host(params), model.config, key, kwargs)
  mode = opt_mode if hook.keeps_paths else "reinit"
  new_model = build(new_config)
  params = _put(new_params, new_model.param_shardings)
  fresh = jax.device_get(new_model.init_opt(params))
  new_opt = growth_lib.transfer_opt_state(_host(opt_state), fresh, mode=mode)
  opt_state = _put(new_opt, new_model.opt_shardings)
  loss_after = float(new_model.eval_loss(params, eval_batch))
  record = {"hook": hook.name, "loss_before": loss_before, "loss_after": loss_after,
            "abs_diff": abs(loss_after - loss_before), "opt_state": mode,
            "n_params_before": n_before, "n_params_after": _count(params),
            "model_config": families.model_config_to_json(new_config)}
  return new_model, params, opt_state, record


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


def _train(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
           progress: Callable[[dict[str, Any]], None] | None, signals: list[int]) -> TrainResult:
  maybe_initialize_distributed(config.distributed)
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  mesh = make_mesh(int(config.mesh.model))
  n_data = mesh.shape["data"]
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % n_data:
      raise ConfigError(f"config.{name}={config[name]} is not divisible by the data-parallel "
                       f"size {n_data} ({jax.device_count()} devices / mesh.model "
                       f"{config.mesh.model})")
  family = families.get_family(config.model.name)
  optim_key = _optim_key(config)
  build = lambda model_config: _build(family.name, model_config, optim_key, mesh,
                                      int(config.seq_len))
  if config.data.corpus:
    corpus = data_lib.load_named_corpus(config.data.corpus, config.data)
  else:
    corpus = data_lib.load_corpus(root=config.data.root or None, max_bytes=config.data.max_bytes,
                                  eval_percent=config.data.eval_percent)
  batch_s = NamedSharding(mesh, P("data"))
  eval_batch = _put(data_lib.eval_batch(corpus, batch_size=config.eval_batch_size,
                                        seq_len=config.seq_len, seed=config.seed), batch_s)
  tokens_per_step = int(config.batch_size) * int(config.seq_len)
  growth_steps = sorted(int(s) for s in config.growth.steps)
  hook = growth_lib.get_hook(config.growth.hook, family.name) if growth_steps else None

  manager = ckpt_lib.open_manager(workdir, keep=int(config.keep_checkpoints))
  latest = manager.latest_step()
  if latest is None:
    step = 0
    model_config = families.model_config_from(family, config.model)
    model = build(model_config)
    rng = np.asarray(jax.random.PRNGKey(int(config.seed)))
    params = model.init_params(rng)
    if float(config.init.gg_nu) > 0:  # GG init, variance-matched to the model's own init
      params = jax.device_put(prune.gg_reinit(params, jax.random.fold_in(rng, 1),
                                              nu=float(config.init.gg_nu)), model.param_shardings)
    opt_state = model.init_opt(params)
    writer = log_lib.MetricsWriter(workdir / "metrics.jsonl", enabled=is_main,
                                   truncate_after_step=-1)
  else:
    meta = ckpt_lib.restore_meta(manager, latest)
    try:
      ckpt_lib.check_fingerprint(meta, config, f"{workdir}/checkpoints/{latest}")
    except ValueError as e:
      raise ConfigError(str(e)) from None
    step = int(meta["step"])
    model_config = families.model_config_from_json(family, meta["model_config"])
    model = build(model_config)
    abstract_params = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
    abstract = {
        "params": ckpt_lib.abstract_like(abstract_params, model.param_shardings),
        "opt_state": ckpt_lib.abstract_like(jax.eval_shape(model.init_opt, abstract_params),
                                            model.opt_shardings),
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, P())),
    }
    state = ckpt_lib.restore_state(manager, latest, abstract)
    params, opt_state = state["params"], state["opt_state"]
    rng = np.asarray(jax.device_get(state["rng"]))
    writer = log_lib.MetricsWriter(workdir / "metrics.jsonl", enabled=is_main,
                                   truncate_after_step=step)
    if progress:
      progress({"event": "resume", "step": step})
    writer.write({"event": "resume", "step": step})

  def emit(record: dict[str, Any]) -> None:
    writer.write(record)
    if progress:
      progress(record)

  def save(at_step: int) -> None:
    meta = {"step": at_step, "model_family": family.name,
            "model_config": families.model_config_to_json(model.config),
            "fingerprint": ckpt_lib.fingerprint(config),
            "config_fields": ckpt_lib.config_fields(config)}
    state = {"params": params, "opt_state": opt_state, "rng": _put(rng, NamedSharding(mesh, P()))}
    if jax.process_count() == 1:
      state = jax.device_get(state)  # host copies: orbax then skips per-shard slicing programs
    ckpt_lib.save(manager, at_step, state, meta)

  pending: list[tuple[int, float, Any]] = []
  clock = [time.perf_counter(), step]  # start of the current throughput interval

  def flush() -> None:
    """Writes the pending train records (tokens_per_s: mean over the interval, compiles included)."""
    if not pending:
      return
    fetched = jax.device_get([m for _, _, m in pending])
    now = time.perf_counter()
    rate = (pending[-1][0] - clock[1]) * tokens_per_step / max(now - clock[0], 1e-9)
    n_params = _count(params)
    for (s, s_lr, _), m in zip(pending, fetched):
      emit({"event": "train", "step": s, "loss": float(m["loss"]),
            "grad_norm": float(m["grad_norm"]), "lr": s_lr, "tokens": s * tokens_per_step,
            "tokens_per_s": rate, "n_params": n_params})
    clock[:] = [now, pending[-1][0]]
    pending.clear()

  snap_every = int(config.snapshot.every)
  snapshotter = snapshot_lib.Snapshotter(int(config.snapshot.nodes)) if snap_every else None
  fail_at = int(config.snapshot.fail_at)
  saved_at = -1
  stop = min(int(config.stop_at_step) or int(config.num_steps), int(config.num_steps))
  while step < stop:
    if signals:
      break
    if step in growth_steps:
      flush()
      model, params, opt_state, record = _grow(
          hook, model, params, opt_state, eval_batch, build,
          key=jax.random.fold_in(rng, step + 1), kwargs=config.growth.kwargs.to_dict(),
          opt_mode=config.growth.opt_state)
      emit({"event": "growth", "step": step, **record})
      clock[:] = [time.perf_counter(), step]
    batch = _put(data_lib.train_batch(corpus, step=step, batch_size=config.batch_size,
                                      seq_len=config.seq_len, seed=config.seed), batch_s)
    lr = learning_rate(step, config.optim, int(config.num_steps))
    step_key = np.asarray(jax.random.fold_in(rng, step))  # host value: fine multi-process
    params, opt_state, metrics = model.train_step(params, opt_state, batch, np.float32(lr),
                                                  step_key)
    step += 1
    pending.append((step, lr, metrics))
    if fail_at and step == fail_at and snapshotter.latest_step() is not None:
      flush()
      fail_at = 0  # one simulated failure per run
      snapshotter.lose(int(config.snapshot.lose_node))
      snap_step, state = snapshotter.restore()
      # Through an XLA copy, so the buffers are laid out as the step's own outputs (arrays made
      # from host memory may alias it and round differently in vectorised reductions).
      params = jax.tree.map(jnp.copy, _put(state["params"], model.param_shardings))
      opt_state = jax.tree.map(jnp.copy, _put(state["opt_state"], model.opt_shardings))
      rng = np.asarray(state["rng"])
      writer = log_lib.MetricsWriter(workdir / "metrics.jsonl", enabled=is_main,
                                     truncate_after_step=snap_step)
      emit({"event": "recovered", "step": snap_step, "failed_at": step,
            "lost_node": int(config.snapshot.lose_node),
            "rebuilt_bytes": snapshotter.bytes_per_node})
      step = snap_step
      clock[:] = [time.perf_counter(), step]
      continue
    if step % config.log_every == 0 or step == stop:
      flush()
    if (config.eval_every and step % config.eval_every == 0) or step == config.num_steps:
      emit({"event": "eval", "step": step,
            "eval_loss": float(model.eval_loss(params, eval_batch))})
    if step % config.checkpoint_every == 0 or step == stop:
      save(step)
      saved_at = step
    if snapshotter is not None and step % snap_every == 0:
      snapshotter.snapshot(step, {"params": params, "opt_state": opt_state, "rng": rng})
  if signals and step != saved_at:
    flush()
    save(step)
  if signals:
    emit({"event": "interrupted", "step": step, "signal": int(signals[0])})
  if snapshotter is not None:
    snapshotter.close()
  manager.close()

  records = log_lib.read_jsonl(workdir / "metrics.jsonl") if is_main else []
  if is_main and config.plot and step == config.num_steps:
    log_lib.plot_metrics(records, workdir / "loss.png",
                         title=f"{family.name} on stdlib bytes ({config.num_steps} steps)")
  return TrainResult(params=params, model_config=model.config, step=step, records=records,
                     workdir=workdir, interrupted=int(signals[0]) if signals else None)
