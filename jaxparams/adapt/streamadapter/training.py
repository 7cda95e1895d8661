"""Training and evaluation: the in-context base model, the StreamAdapter modules, LoRA test-time
training, and the per-query cost of ICL vs StreamAdapter.

* :func:`train_base`: a small Llama learns the :class:`~.tasks.TaskFamily` in context (loss on
  every answer token of ``[BOS, x_1, y_1, ..., x_K, y_K]``, fresh tasks each step).
* :func:`train_adapter`: only the StreamAdapter modules train (optax AdamW), the base frozen, over
  many tasks (``n_train_tasks`` of them, 0 = a fresh draw each step), with ``k`` uniform in
  ``1..max_k`` demonstrations (padded, masked) and every input symbol as a query.
* :func:`lora_ttt`: the test-time-training baseline, a rank-``r`` LoRA fitted per task on its
  ``k`` demonstrations for a fixed number of Adam steps (vmapped over tasks).
* :func:`evaluate`: accuracy on held-out tasks for each ``k`` of zero-shot, ICL, StreamAdapter and
  LoRA-TTT, and the per-query FLOPs (XLA cost analysis) and wall time of ICL and StreamAdapter.

Steps are jitted with the batch sharded over a ``'data'`` mesh of all devices (parameters
replicated), so the same code runs on one CPU or 8 fake devices.

Example:
  >>> import jax
  >>> from jaxparams.models import LlamaConfig
  >>> fam = TaskFamily(n_in=4, n_out=4)
  >>> mc = LlamaConfig(vocab_size=fam.vocab_size, hidden_size=16, intermediate_size=32,
  ...                  num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64)
  >>> base, log = train_base(mc, fam, BaseTrainConfig(steps=2, batch_size=8, max_k=4),
  ...                        log_every=1)
  >>> len(log), sorted(base)[:2]
  (2, ['embed_tokens', 'layers_0'])
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxparams import tree as jtree
from jaxparams.adapt import tree_api
from jaxparams.adapt.streamadapter import adapter as sa_lib
from jaxparams.adapt.streamadapter.tasks import TaskFamily
from jaxparams.models import Llama

__all__ = ["BaseTrainConfig", "AdapterTrainConfig", "LoraTTTConfig", "train_base",
           "train_adapter", "adapter_loss", "lora_ttt", "evaluate", "icl_accuracy", "TaskPool"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaseTrainConfig:
  """Training of the base model. ``max_k``: demonstrations per training sequence."""
  steps: int = 2000
  batch_size: int = 64
  lr: float = 3e-3
  warmup_steps: int = 100
  weight_decay: float = 0.01
  max_k: int = 32
  seed: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdapterTrainConfig:
  """Training of the StreamAdapter modules (base frozen).

  ``n_train_tasks``: size of the pool of training tasks (0 = a fresh draw every step).
  """
  steps: int = 1000
  batch_size: int = 32
  lr: float = 3e-3
  warmup_steps: int = 50
  weight_decay: float = 0.0
  max_k: int = 32
  n_train_tasks: int = 0
  seed: int = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraTTTConfig:
  """LoRA test-time training: ``rank``, Adam ``lr`` and ``steps`` on the ``k`` demonstrations."""
  rank: int = 8
  steps: int = 50
  lr: float = 1e-2
  targets: tuple[str, ...] = ("**/attn/o_proj/kernel", "**/mlp/down_proj/kernel")


def _check_positive(cfg: Any) -> None:
  for f in dataclasses.fields(cfg):
    v = getattr(cfg, f.name)
    if f.name in ("steps", "batch_size", "max_k", "rank") and int(v) < 1:
      raise ValueError(f"{type(cfg).__name__}.{f.name} must be >= 1, found {v}")


def _mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ("data",))


def _shard(mesh: Mesh, *arrays: np.ndarray):
  s = NamedSharding(mesh, P("data"))
  return tuple(jax.device_put(a, s) for a in arrays)


def _replicate(mesh: Mesh, tree: Any) -> Any:
  return jax.device_put(tree, NamedSharding(mesh, P()))


def _check_batch(batch_size: int, mesh: Mesh, what: str) -> None:
  if batch_size % mesh.size:
    raise ValueError(f"{what}.batch_size={batch_size} is not divisible by the {mesh.size} "
                     "devices of the data-parallel mesh")


def _schedule(steps: int, lr: float, warmup: int) -> optax.Schedule:
  warmup = max(1, min(warmup, steps - 1)) if steps > 1 else 1
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr * 0.05)


def _ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


class TaskPool:
  """Training tasks: a fixed pool of ``n`` tasks, or fresh draws when ``n == 0``."""

  def __init__(self, family: TaskFamily, n: int, seed: int):
    self.family, self.n, self.seed = family, int(n), seed
    self.pool = family.sample_tasks(np.random.default_rng([seed, 99]), n) if n else None

  def draw(self, rng: np.random.Generator, batch: int) -> np.ndarray:
    if self.pool is None:
      return self.family.sample_tasks(rng, batch)
    return self.pool[rng.integers(0, self.n, size=batch)]

  def contains(self, tasks: np.ndarray) -> np.ndarray:
    """``bool[n]``: which of ``tasks`` are in the pool (always False for fresh draws)."""
    if self.pool is None:
      return np.zeros(len(tasks), bool)
    return (tasks[:, None, :] == self.pool[None]).all(-1).any(-1)


def train_base(model_config: Any, family: TaskFamily, cfg: BaseTrainConfig, *,
               log: Callable[[dict], None] | None = None, log_every: int = 100
               ) -> tuple[dict, list[dict]]:
  """Trains a Llama to learn ``family`` in context; returns ``(params, log records)``."""
  _check_positive(cfg)
  mesh = _mesh()
  _check_batch(cfg.batch_size, mesh, "BaseTrainConfig")
  model = Llama(model_config)
  seq = family.tokens_per_demo() * cfg.max_k
  params = model.init(jax.random.key(cfg.seed), jnp.zeros((1, seq), jnp.int32))["params"]
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(_schedule(cfg.steps, cfg.lr, cfg.warmup_steps),
                               b2=0.98, weight_decay=cfg.weight_decay))
  params = _replicate(mesh, params)
  opt = _replicate(mesh, tx.init(params))

  def loss_fn(p, ids):
    return family.lm_loss(model.apply({"params": p}, ids[:, :-1]), ids)

  @jax.jit
  def step(p, o, ids):
    loss, g = jax.value_and_grad(loss_fn)(p, ids)
    upd, o = tx.update(g, o, p)
    return optax.apply_updates(p, upd), o, loss

  records = []
  for i in range(cfg.steps):
    rng = np.random.default_rng([cfg.seed, 0, i])
    tasks = family.sample_tasks(rng, cfg.batch_size)
    ids = family.context_ids(tasks, family.sample_demos(rng, cfg.batch_size, cfg.max_k))
    params, opt, loss = step(params, opt, *_shard(mesh, ids))
    if (i + 1) % log_every == 0 or i + 1 == cfg.steps:
      rec = {"event": "base", "step": i + 1, "loss": float(loss)}
      records.append(rec)
      if log:
        log(rec)
  return jax.device_get(params), records


def adapter_loss(adapter_params: dict, model: Any, base_params: Any,
                 config: sa_lib.StreamAdapterConfig, family: TaskFamily, context_ids: jax.Array,
                 token_mask: jax.Array, tasks: jax.Array) -> jax.Array:
  """Mean cross-entropy of every query's answer, the query run alone under the absorbed context.

  Args:
    adapter_params: Trainable StreamAdapter parameters (:func:`adapter.init`).
    model: Frozen base Llama; ``base_params`` its parameters (no gradient reaches them).
    config: :class:`~.adapter.StreamAdapterConfig`; ``family`` the :class:`TaskFamily`.
    context_ids: ``[b, 1 + T]`` demonstrations (padded); ``token_mask`` ``bool[b, T]``.
    tasks: ``int[b, n_in]`` the tasks (answers ``tasks[i, x]``).
  """
  ad = sa_lib.adapter_from_context(adapter_params, model, base_params, context_ids, config,
                                   token_mask)
  q = jnp.asarray(family.query_ids(context_ids.shape[0]))
  scores = family.scores(sa_lib.query_logits(model, base_params, ad, q)[:, :, -1])
  return _ce(scores, tasks).mean()


def _adapter_batch(family: TaskFamily, pool: TaskPool, rng: np.random.Generator, batch: int,
                   max_k: int):
  tasks = pool.draw(rng, batch)
  ks = rng.integers(1, max_k + 1, size=batch)
  ctx = family.context_ids(tasks, family.sample_demos(rng, batch, max_k))
  tpd = family.tokens_per_demo()
  mask = np.arange(tpd * max_k)[None, :] < tpd * ks[:, None]
  return ctx, mask, tasks.astype(np.int32)


def train_adapter(model_config: Any, base_params: Any, family: TaskFamily,
                  sa_config: sa_lib.StreamAdapterConfig, cfg: AdapterTrainConfig, *,
                  log: Callable[[dict], None] | None = None, log_every: int = 100
                  ) -> tuple[dict, list[dict]]:
  """Trains the StreamAdapter modules only; returns ``(adapter params, log records)``."""
  _check_positive(cfg)
  mesh = _mesh()
  _check_batch(cfg.batch_size, mesh, "AdapterTrainConfig")
  model = Llama(model_config)
  pool = TaskPool(family, cfg.n_train_tasks, cfg.seed)
  ap = sa_lib.init(jax.random.key(cfg.seed), model_config, base_params, sa_config)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(_schedule(cfg.steps, cfg.lr, cfg.warmup_steps),
                               weight_decay=cfg.weight_decay))
  ap, base = _replicate(mesh, ap), _replicate(mesh, base_params)
  opt = _replicate(mesh, tx.init(ap))

  @jax.jit
  def step(ap, o, base, ctx, mask, tasks):
    loss, g = jax.value_and_grad(adapter_loss)(ap, model, base, sa_config, family, ctx, mask,
                                               tasks)
    upd, o = tx.update(g, o, ap)
    return optax.apply_updates(ap, upd), o, loss

  records, window = [], []
  for i in range(cfg.steps):
    rng = np.random.default_rng([cfg.seed, 1, i])
    batch = _shard(mesh, *_adapter_batch(family, pool, rng, cfg.batch_size, cfg.max_k))
    ap, opt, loss = step(ap, opt, base, *batch)
    window.append(loss)
    if (i + 1) % log_every == 0 or i + 1 == cfg.steps:
      rec = {"event": "adapter", "step": i + 1,
             "loss": float(np.mean(jax.device_get(window)))}
      window = []
      records.append(rec)
      if log:
        log(rec)
  return jax.device_get(ap), records


def lora_ttt(model: Any, base_params: Any, family: TaskFamily, tasks: np.ndarray,
             xs: np.ndarray, cfg: LoraTTTConfig, key: jax.Array) -> dict:
  """Fits one LoRA per task on its demonstrations; returns the batched adapter tree.

  The loss is the query-format cross-entropy of the demonstrated inputs (each demonstrated ``x``
  answered by ``f(x)``, the queries run alone, as after absorption); inputs not demonstrated carry
  no loss.

  Args:
    model: Frozen base Llama; ``base_params`` its parameters.
    family: The :class:`TaskFamily`; ``tasks`` ``int[n, n_in]``; ``xs`` ``int[n, k]`` the
      demonstrated inputs.
    cfg: :class:`LoraTTTConfig`.
    key: PRNG key of the LoRA initialisation (PEFT's: ``a`` random, ``b`` zero).
  """
  _check_positive(cfg)
  flat = dict(jtree.flatten(base_params))
  chosen = {p for g in cfg.targets for p in jtree.select(flat, g, flat=True)}
  init = tree_api.init(base_params, lambda path, _: path in chosen, rank=cfg.rank,
                       alpha=cfg.rank, key=key)
  train0 = {p: {"a": e["a"], "b": e["b"]} for p, e in tree_api.entries(init).items()}
  scales = {p: e["scale"] for p, e in tree_api.entries(init).items()}
  tx = optax.adam(cfg.lr)
  dmodel = model.clone(dot=tree_api.dot)
  base = jax.lax.stop_gradient(base_params)
  q = jnp.asarray(family.query_ids(1)[0])
  seen = np.zeros(tasks.shape, np.float32)
  np.put_along_axis(seen, xs, 1.0, axis=1)

  def to_tree(train):
    return _nest({p: {"a": t["a"], "b": t["b"], "scale": scales[p]} for p, t in train.items()})

  def loss(train, task, w):
    logits = dmodel.apply({"params": tree_api.inject(base, to_tree(train))}, q)[:, -1]
    ce = _ce(family.scores(logits[None])[0], task)
    return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)

  def fit(task, w):
    def body(carry, _):
      t, o = carry
      g = jax.grad(loss)(t, task, w)
      u, o = tx.update(g, o, t)
      return (optax.apply_updates(t, u), o), None
    (t, _), _ = jax.lax.scan(body, (train0, tx.init(train0)), None, length=cfg.steps)
    return to_tree(t)

  return jax.jit(jax.vmap(fit))(jnp.asarray(tasks, jnp.int32), jnp.asarray(seen))


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, v in flat.items():
    node = out
    parts = path.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = v
  return out


def _accuracy(scores: jax.Array, tasks: np.ndarray) -> float:
  return float(np.mean(np.asarray(jnp.argmax(scores, -1)) == tasks))


def icl_accuracy(model_config: Any, base_params: Any, family: TaskFamily, ks: list[int],
                 n_tasks: int, seed: int = 1234) -> dict[str, Any]:
  """Zero-shot and ICL accuracy of the base model on fresh tasks, for each ``k``."""
  out = evaluate(model_config, base_params, None, family, None, ks, n_tasks, seed=seed,
                 methods=("icl",))
  return {k: out[k] for k in ("k", "zero_shot", "icl")}


def _cost(fn: Callable, *args, reps: int = 10) -> tuple[float, float, Any]:
  """``(flops, seconds, output)`` of one call of ``jit(fn)``: XLA cost analysis, and the fastest
  of ``reps`` timed calls (the least disturbed by other processes on a shared machine)."""
  compiled = jax.jit(fn).lower(*args).compile()
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  flops = float(ca.get("flops", float("nan"))) if ca else float("nan")
  out = jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return flops, float(np.min(times)), out


def evaluate(model_config: Any, base_params: Any, adapter_params: dict | None,
             family: TaskFamily, sa_config: sa_lib.StreamAdapterConfig | None, ks: list[int],
             n_tasks: int, *, seed: int = 1234, lora: LoraTTTConfig | None = None,
             exclude: TaskPool | None = None,
             methods: tuple[str, ...] = ("icl", "streamadapter", "lora_ttt")) -> dict[str, Any]:
  """Held-out accuracy and per-query cost for every ``k`` (every input symbol queried per task).

  Args:
    model_config, base_params: The base Llama.
    adapter_params, sa_config: The trained StreamAdapter (needed for ``'streamadapter'``).
    family: The task family; ``n_tasks`` held-out tasks drawn with ``seed``.
    ks: Numbers of demonstrations.
    lora: LoRA-TTT settings (default :class:`LoraTTTConfig`).
    exclude: Training pool; held-out tasks found in it are redrawn.
    methods: Which of ``'icl'``, ``'streamadapter'``, ``'lora_ttt'`` to run.

  Returns:
    ``{'k', 'zero_shot', <method>: [acc per k], 'icl_ms_per_query', 'icl_flops_per_query',
    'streamadapter_ms_per_query', 'streamadapter_flops_per_query', 'absorb_ms_per_context',
    'absorb_flops_per_context', 'lora_ttt_ms_per_context', ...}``.
  """
  model = Llama(model_config)
  lora = lora or LoraTTTConfig()
  rng = np.random.default_rng([seed, 7])
  tasks = family.sample_tasks(rng, n_tasks)
  if exclude is not None:
    for _ in range(100):
      clash = exclude.contains(tasks)
      if not clash.any():
        break
      tasks[clash] = family.sample_tasks(rng, int(clash.sum()))
  n_q = tasks.size                                     # every input of every task is queried
  base = jax.device_put(base_params)

  def last_logits(p, ids):                             # [n, s, t] -> [n, s, vocab]
    n, s_, t = ids.shape
    return model.apply({"params": p}, ids.reshape(n * s_, t))[:, -1].reshape(n, s_, -1)

  q_ids = jnp.asarray(family.query_ids(n_tasks))
  zs = family.scores(jax.jit(last_logits)(base, q_ids))
  out: dict[str, Any] = {"k": list(ks), "zero_shot": _accuracy(zs, tasks),
                         "n_tasks": n_tasks, "n_queries": int(n_q)}
  metrics = {"icl": ("icl_ms_per_query", "icl_flops_per_query"),
             "streamadapter": ("streamadapter_ms_per_query", "streamadapter_flops_per_query",
                               "absorb_ms_per_context", "absorb_flops_per_context"),
             "lora_ttt": ("lora_ttt_ms_per_context",)}
  for m in methods:
    if m not in metrics:
      raise ValueError(f"unknown method {m!r}; valid: {', '.join(metrics)}")
    out[m] = []
    for name in metrics[m]:
      out[name] = []
  query_fn = lambda p, a, q: family.scores(sa_lib.query_logits(model, p, a, q)[:, :, -1])
  for k in ks:
    xs = family.sample_demos(np.random.default_rng([seed, 8, k]), n_tasks, k)
    ctx = jnp.asarray(family.context_ids(tasks, xs))
    if "icl" in methods:
      ids = jnp.asarray(family.icl_ids(np.asarray(ctx)))
      flops, sec, logits = _cost(last_logits, base, ids)
      out["icl"].append(_accuracy(family.scores(logits), tasks))
      out["icl_flops_per_query"].append(flops / n_q)
      out["icl_ms_per_query"].append(1e3 * sec / n_q)
    if "streamadapter" in methods:
      absorb_fn = lambda ap, p, c: sa_lib.adapter_from_context(ap, model, p, c, sa_config)
      flops, sec, ad = _cost(absorb_fn, adapter_params, base, ctx)
      out["absorb_flops_per_context"].append(flops / n_tasks)
      out["absorb_ms_per_context"].append(1e3 * sec / n_tasks)
      flops, sec, scores = _cost(query_fn, base, ad, q_ids)
      out["streamadapter"].append(_accuracy(scores, tasks))
      out["streamadapter_flops_per_query"].append(flops / n_q)
      out["streamadapter_ms_per_query"].append(1e3 * sec / n_q)
    if "lora_ttt" in methods:
      t0 = time.perf_counter()
      trees = jax.block_until_ready(lora_ttt(model, base, family, tasks, xs, lora,
                                             jax.random.key(seed)))
      out["lora_ttt_ms_per_context"].append(1e3 * (time.perf_counter() - t0) / n_tasks)
      out["lora_ttt"].append(_accuracy(jax.jit(query_fn)(base, trees, q_ids), tasks))
  return out
