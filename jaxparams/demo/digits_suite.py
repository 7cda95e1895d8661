"""A FusionBench-style merging suite built from scikit-learn's digits (CPU, seconds).

One shared *pretrained* backbone (an :class:`~jaxparams.models.MLP` with a ReLU on its
output features) is trained on the original digits. Each task is a real distribution shift
of the same images (rotated, mirrored, inverted, noisy, blurred, shifted, downsampled,
elastic). As with CLIP's zero-shot heads in FusionBench, every task gets its own fixed
linear head (a probe trained on the frozen pretrained features), and one *expert* backbone
per task is fine-tuned from the pretrained one with that head frozen. Merging methods merge
the backbones; each task is evaluated with its own head on held-out test images.

Example:
  >>> from jaxparams.demo.digits_suite import build_suite, evaluate
  >>> s = build_suite(tasks=("rotate", "invert"), pretrain_steps=20, probe_steps=10,
  ...                 finetune_steps=10)
  >>> sorted(evaluate(s, s.pretrained))
  ['average', 'invert', 'rotate']
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["SHIFTS", "TABLE_METHODS", "DigitsSuite", "Task", "build_suite", "entropy_objective",
           "evaluate", "expert_fishers", "expert_grams", "forward", "logits_fn", "merge_table",
           "shift_images", "task_accuracies_fn", "val_error", "val_loss"]

PyTree = Any


def _rotate(img, rng):
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  return ndimage.rotate(img, 45.0, reshape=False, order=1, mode="constant")


def _mirror(img, rng):
  return img[:, ::-1]


def _invert(img, rng):
  return 1.0 - img


def _noisy(img, rng):
  return np.clip(img + rng.normal(0.0, 0.25, img.shape), 0.0, 1.0)


def _blur(img, rng):
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  return ndimage.gaussian_filter(img, 1.0)


def _shift(img, rng):
  out = np.zeros_like(img)
  out[2:, 2:] = img[:-2, :-2]
  return out


def _downsample(img, rng):
  small = img.reshape(4, 2, 4, 2).mean(axis=(1, 3))
  return np.repeat(np.repeat(small, 2, 0), 2, 1)


def _elastic(img, rng):
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  dx = ndimage.gaussian_filter(rng.uniform(-1, 1, img.shape), 1.5) * 3.0
  dy = ndimage.gaussian_filter(rng.uniform(-1, 1, img.shape), 1.5) * 3.0
  yy, xx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
  return ndimage.map_coordinates(img, [yy + dy, xx + dx], order=1, mode="constant")


#: The distribution shifts (name -> per-image ``f(img[8, 8] in [0, 1], rng) -> img``).
SHIFTS: dict[str, Callable] = {
    "rotate": _rotate, "mirror": _mirror, "invert": _invert, "noisy": _noisy, "blur": _blur,
    "shift": _shift, "downsample": _downsample, "elastic": _elastic,
}


def shift_images(name: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
  """Applies the shift ``name`` to images ``x[n, 64]`` in ``[0, 1]`` (deterministic per seed).

  Raises:
    ValueError: unknown shift name.
  """
  if name not in SHIFTS:
    raise ValueError(f"unknown shift {name!r}; valid: {sorted(SHIFTS)}")
  rng = np.random.default_rng(seed)
  f = SHIFTS[name]
  imgs = x.reshape(-1, 8, 8).astype(np.float64)
  return np.stack([f(im, rng) for im in imgs]).reshape(len(x), 64).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Task:
  """One task: shifted images, labels, and the task's fixed head ``{'kernel', 'bias'}``."""
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  head: PyTree


@dataclasses.dataclass(frozen=True)
class DigitsSuite:
  """The suite: ``module`` (backbone MLP), ``pretrained`` and per-task ``experts`` backbones."""
  module: Any
  pretrained: PyTree
  experts: list
  tasks: list

  @property
  def names(self) -> list[str]:
    """Task names, in order."""
    return [t.name for t in self.tasks]


def forward(module, backbone: PyTree, head: PyTree, x: jax.Array) -> jax.Array:
  """Logits of ``head(relu(backbone(x)))``."""
  h = jax.nn.relu(module.apply({"params": backbone}, x))
  if "scale" in head:  # CLIP-style: unit-norm features times a fixed logit scale
    h = head["scale"] * h / (jnp.linalg.norm(h, axis=-1, keepdims=True) + 1e-6)
  return h @ head["kernel"] + head["bias"]


def logits_fn(suite: DigitsSuite) -> Callable:
  """``f(backbone, task_index_or_head, x) -> logits`` bound to the suite's module."""
  return lambda backbone, head, x: forward(suite.module, backbone, head, x)


def _fit(loss_fn, params, steps, lr):
  opt = optax.adam(lr)

  def step(carry, _):
    p, s = carry
    g = jax.grad(loss_fn)(p)
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
  return params


def _ce(logits, y):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def build_suite(tasks: Sequence[str] = tuple(SHIFTS), *, seed: int = 0,
                hidden: Sequence[int] = (256, 64), pretrain_steps: int = 300,
                probe_steps: int = 50, finetune_steps: int = 300, lr: float = 3e-3,
                finetune_lr: float = 1e-3, n_val: int = 100,
                feature_scale: float | None = None) -> DigitsSuite:
  """Builds the suite: pretrained backbone, per-task heads and fine-tuned experts.

  Args:
    tasks: shift names from :data:`SHIFTS` (one task each).
    seed: seeds the split, the shifts' randomness and the initialisation.
    hidden: backbone widths (the last is the feature size the heads read).
    pretrain_steps: full-batch Adam steps on the original digits.
    probe_steps: steps of each task's linear probe on frozen pretrained features, started
      from the pretraining head (few steps: a weak, CLIP-zero-shot-like head).
    finetune_steps: steps of each expert's backbone fine-tuning (head frozen).
    lr: Adam learning rate of pretraining and probes.
    finetune_lr: Adam learning rate of the experts' fine-tuning.
    n_val: labelled validation images per task taken from the training split.
    feature_scale: if set, the heads read unit-norm features times this fixed logit scale
      (as CLIP's zero-shot heads read normalised image embeddings); ``None``: raw features.

  Raises:
    ValueError: unknown or repeated task names, or no task.
  """
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  from jaxparams.models import MLP  # pylint: disable=import-outside-toplevel
  tasks = list(tasks)
  bad = [t for t in tasks if t not in SHIFTS]
  if bad or not tasks or len(set(tasks)) != len(tasks):
    raise ValueError(f"tasks must be distinct names from {sorted(SHIFTS)}, got {tasks}")
  d = load_digits()
  x = (d.data / 16.0).astype(np.float32)
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(x))
  n_test = len(x) // 3
  test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
  module = MLP(features=tuple(hidden))
  key = jax.random.key(seed)
  k_bb, k_head = jax.random.split(key)
  bb = module.init(k_bb, jnp.ones((1, 64)))["params"]
  head0 = {"kernel": jax.random.normal(k_head, (hidden[-1], 10)) * 0.1, "bias": jnp.zeros(10)}
  if feature_scale is not None:
    head0["scale"] = jnp.float32(feature_scale)
  xtr, ytr = jnp.asarray(x[train]), jnp.asarray(y[train])

  @jax.jit
  def pretrain(p):
    return _fit(lambda q: _ce(forward(module, q["bb"], q["head"], xtr), ytr), p, pretrain_steps, lr)

  pre = pretrain({"bb": bb, "head": head0})
  pretrained = pre["bb"]

  @jax.jit
  def probe_then_finetune(h, xs, ys):
    h = _fit(lambda q: _ce(forward(module, pretrained, q, xs), ys), h, probe_steps, lr)
    e = _fit(lambda q: _ce(forward(module, q, h, xs), ys), pretrained, finetune_steps,
             finetune_lr)
    return h, e

  out_tasks, experts = [], []
  for i, name in enumerate(tasks):
    xs = shift_images(name, x, seed=seed + 1000 + i)
    h, e = probe_then_finetune(pre["head"], jnp.asarray(xs[train]), ytr)
    experts.append(e)
    out_tasks.append(Task(name, xs[train], y[train], xs[val], y[val], xs[test], y[test], h))
  return DigitsSuite(module, pretrained, experts, out_tasks)


def evaluate(suite: DigitsSuite, backbone: PyTree | Sequence[PyTree], *,
             split: str = "test") -> dict[str, float]:
  """Accuracy per task (each with its own head) and their ``average``.

  Args:
    suite: the suite.
    backbone: one merged backbone for every task, or one backbone per task (experts).
    split: ``'test'`` or ``'val'``.
  """
  if split not in ("test", "val"):
    raise ValueError(f"unknown split {split!r}; valid: ['test', 'val']")
  per_task = isinstance(backbone, (list, tuple))
  out = {}
  for i, t in enumerate(suite.tasks):
    bb = backbone[i] if per_task else backbone
    x, y = (t.x_test, t.y_test) if split == "test" else (t.x_val, t.y_val)
    pred = jnp.argmax(forward(suite.module, bb, t.head, jnp.asarray(x)), -1)
    out[t.name] = float(jnp.mean(pred == jnp.asarray(y)))
  out["average"] = float(np.mean([out[n] for n in suite.names]))
  return out


# ----------------------------------------------------------------------------- method table
def entropy_objective(suite: DigitsSuite, split: str = "test") -> Callable:
  """AdaMerging's objective: summed prediction entropy on each task's *unlabelled* inputs."""
  from jaxparams.merge.learned import entropy  # pylint: disable=import-outside-toplevel
  xs = [jnp.asarray(t.x_test if split == "test" else t.x_val) for t in suite.tasks]
  heads = [t.head for t in suite.tasks]
  return lambda bb: sum(entropy(forward(suite.module, bb, h, x)) for h, x in zip(heads, xs))


def val_loss(suite: DigitsSuite) -> Callable:
  """Summed cross-entropy on the labelled validation images (black-box search fitness)."""
  data = [(t.head, jnp.asarray(t.x_val), jnp.asarray(t.y_val)) for t in suite.tasks]
  return lambda bb: sum(_ce(forward(suite.module, bb, h, x), y) for h, x, y in data)


def val_error(suite: DigitsSuite) -> Callable:
  """``1 - mean validation accuracy`` over tasks (the black-box fitness of :func:`merge_table`;
  summed cross-entropy would be dominated by the task the pretrained model fails worst)."""
  acc = task_accuracies_fn(suite, split="val")
  return lambda bb: 1.0 - jnp.mean(acc(bb))


def task_accuracies_fn(suite: DigitsSuite, split: str = "test") -> Callable:
  """``f(backbone) -> [T]`` accuracies (traceable: vmap it over merged backbones)."""
  data = [(t.head, jnp.asarray(t.x_test if split == "test" else t.x_val),
           jnp.asarray(t.y_test if split == "test" else t.y_val)) for t in suite.tasks]
  return lambda bb: jnp.stack([jnp.mean(jnp.argmax(forward(suite.module, bb, h, x), -1) == y)
                               for h, x, y in data])


def expert_fishers(suite: DigitsSuite, n_examples: int = 256) -> list:
  """Diagonal empirical Fisher of each expert on its own task's training images."""
  from jaxparams.merge.learned import fisher_diagonal  # pylint: disable=import-outside-toplevel
  out = []
  for e, t in zip(suite.experts, suite.tasks):
    def loglik(bb, x, y, h=t.head):
      return jax.nn.log_softmax(forward(suite.module, bb, h, x[None]))[0, y]
    out.append(fisher_diagonal(loglik, e, jnp.asarray(t.x_train[:n_examples]),
                               jnp.asarray(t.y_train[:n_examples])))
  return out


def expert_grams(suite: DigitsSuite, n_examples: int = 256) -> list:
  """RegMean's ``X^T X`` of every linear layer of each expert on its own task's images."""
  from jaxparams.merge.learned import regmean_grams  # pylint: disable=import-outside-toplevel
  return [regmean_grams(suite.module, e, jnp.asarray(t.x_train[:n_examples]))
          for e, t in zip(suite.experts, suite.tasks)]


def _best_lam(suite, make, grid):
  scores = [evaluate(suite, make(l), split="val")["average"] for l in grid]
  return float(grid[int(np.argmax(scores))])


#: Methods :func:`merge_table` knows, in table order.
TABLE_METHODS = ("pretrained", "experts", "simple_average", "task_arithmetic", "ties",
                 "fisher", "regmean", "adamerging_task", "adamerging_layer",
                 "adamerging_ties_task", "adamerging_ties_layer", "cmaes_task", "cmaes_layer")


def merge_table(suite: DigitsSuite, methods: Sequence[str] = TABLE_METHODS, *,
                ada_steps: int = 500, ada_lr: float = 1e-3, ada_trace_every: int = 50,
                cma_generations: int = 60,
                cma_population: int = 16, seed: int = 0) -> dict[str, dict]:
  """Runs merging methods on the suite: ``{method: {'acc': evaluate(...), 'seconds': s, ...}}``.

  Task arithmetic's and TIES's scaling ``lam`` is picked on the validation split from
  ``0.1..1.0`` (FusionBench uses a fixed 0.3); TIES keeps the top 20% (FusionBench's
  threshold 20) and sums (``normalize=False``, FusionBench's ``merge_func sum``).
  AdaMerging follows the paper's code: coefficients initialised at 0.3, clipped to
  ``[0, 1]``, Adam lr 1e-3, 500 steps on the summed entropy of each task's own head on its
  unlabelled test inputs (``adamerging_ties_*``: over TIES's fixed masks, density 0.2);
  its ``trace`` holds entropy and test accuracy every ``ada_trace_every`` steps.

  Raises:
    ValueError: unknown method names.
  """
  import time  # pylint: disable=import-outside-toplevel
  from jaxparams import merge as jm  # pylint: disable=import-outside-toplevel
  from jaxparams.merge import learned  # pylint: disable=import-outside-toplevel
  bad = [m for m in methods if m not in TABLE_METHODS]
  if bad:
    raise ValueError(f"unknown methods {bad}; valid: {list(TABLE_METHODS)}")
  base, ex = suite.pretrained, suite.experts
  grid = np.round(np.arange(0.1, 1.01, 0.1), 2)

  def ada(gran, ties_density=None):
    ent = entropy_objective(suite)
    acc = task_accuracies_fn(suite)
    probe = jax.jit(lambda bb: (ent(bb), jnp.mean(acc(bb))))
    trace = []

    def record(step, lam, merged):
      e, a = probe(merged)
      trace.append({"step": int(step), "entropy": float(e), "accuracy": float(a),
                    "coef_mean": float(jnp.mean(lam))})

    m, lam, hist = learned.adamerging(base, ex, ent, granularity=gran, steps=ada_steps,
                                      lr=ada_lr, ties_density=ties_density,
                                      callback_every=ada_trace_every if ada_trace_every else 0,
                                      callback=record if ada_trace_every else None)
    return m, {"entropy_start": float(hist[0]), "entropy_end": float(hist[-1]),
               "coef_mean": float(jnp.mean(lam)), "trace": trace}

  def cma(gran):
    m, _, hist = learned.cmaes_search(base, ex, val_error(suite), granularity=gran,
                                      population=cma_population, generations=cma_generations,
                                      seed=seed)
    return m, {"val_error_start": float(hist[0]), "val_error_end": float(hist[-1])}

  def ta():
    lam = _best_lam(suite, lambda l: jm.task_arithmetic(base, ex, lam=l), grid)
    return jm.task_arithmetic(base, ex, lam=lam), {"lam": lam}

  def ties():
    mk = lambda l: jm.ties(base, ex, density=0.2, lam=l, normalize=False)
    lam = _best_lam(suite, mk, grid)
    return mk(lam), {"lam": lam}

  runners = {
      "pretrained": lambda: (base, {}),
      "experts": lambda: (list(ex), {}),
      "simple_average": lambda: (jm.linear(ex), {}),
      "task_arithmetic": ta,
      "ties": ties,
      "fisher": lambda: (learned.fisher_merge(ex, expert_fishers(suite)), {}),
      "regmean": lambda: (learned.regmean(ex, expert_grams(suite), alpha=0.95), {}),
      "adamerging_task": lambda: ada("task"),
      "adamerging_layer": lambda: ada("layer"),
      "adamerging_ties_task": lambda: ada("task", 0.2),
      "adamerging_ties_layer": lambda: ada("layer", 0.2),
      "cmaes_task": lambda: cma("task"),
      "cmaes_layer": lambda: cma("layer"),
  }
  out = {}
  for m in methods:
    t0 = time.perf_counter()
    params, info = runners[m]()
    jax.block_until_ready(params)
    dt = time.perf_counter() - t0
    out[m] = {"acc": evaluate(suite, params), "seconds": dt, **info}
  return out
