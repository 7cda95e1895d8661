"""A FusionBench-style merging suite built from scikit-learn's digits (CPU, minutes).

Like CLIP, the *pretrained* backbone sees many domains: the original digits plus copies
transformed by one of 14 families (:mod:`jaxparams.demo.digits_shifts`) at a random
strength, classified into ``domain x 10 + digit`` classes by a cosine head that reads
L2-normalised features times a fixed logit scale. Each task is one family at full strength;
its head is the task domain's 10 columns of the pretraining head, **frozen and never merged**
(as FusionBench freezes CLIP's zero-shot heads). One *expert* backbone per task is fine-tuned
through that head; merging methods merge backbones only, and each task is evaluated with its
own head on held-out test images.

Example:
  >>> from jaxparams.demo.digits_suite import build_suite, evaluate
  >>> s = build_suite(("rotate", "invert"), hidden=(32, 16), copies=1, pretrain_steps=20,
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

from jaxparams.demo.digits_shifts import FAMILIES, TASK_FAMILIES, transform_images

__all__ = ["TASKS", "DigitsSuite", "Task", "build_suite", "entropy_objective", "evaluate",
           "expert_fishers", "expert_grams", "forward", "logits_fn", "pretraining_set",
           "shift_images", "task_accuracies_fn", "val_error", "val_loss"]

PyTree = Any
#: The task names, in the suite's order (each is a family of ``digits_shifts`` at st = 1).
TASKS = tuple(TASK_FAMILIES)
#: Pretraining domains: 0 = unchanged, then the families in ``FAMILIES`` order.
DOMAINS = ("original",) + tuple(FAMILIES)


def shift_images(name: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
  """Task ``name``'s images: its family at full strength on ``x[n, 64]`` (deterministic).

  Raises:
    ValueError: unknown task name.
  """
  if name not in TASK_FAMILIES:
    raise ValueError(f"unknown task {name!r}; valid: {sorted(TASK_FAMILIES)}")
  return transform_images(TASK_FAMILIES[name], x, strength=1.0, seed=seed)


@dataclasses.dataclass(frozen=True)
class Task:
  """One task: transformed images, labels, and its frozen head ``{'kernel', 'scale'}``."""
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
  """The suite: ``module`` (backbone MLP), ``pretrained`` and per-task ``experts`` backbones;
  ``pretrain_head`` is the pretraining cosine head (unit columns, ``[features, 150]``)."""
  module: Any
  pretrained: PyTree
  experts: list
  tasks: list
  pretrain_head: Any = None

  @property
  def names(self) -> list[str]:
    """Task names, in order."""
    return [t.name for t in self.tasks]


def forward(module, backbone: PyTree, head: PyTree, x: jax.Array) -> jax.Array:
  """Logits of ``head(backbone(x))``; a head with ``scale`` reads unit-norm features x scale
  (CLIP-style); ``bias`` is optional."""
  h = module.apply({"params": backbone}, x)
  if "scale" in head:
    h = head["scale"] * h / (jnp.linalg.norm(h, axis=-1, keepdims=True) + 1e-6)
  out = h @ head["kernel"]
  return out + head["bias"] if "bias" in head else out


def logits_fn(suite: DigitsSuite) -> Callable:
  """``f(backbone, head, x) -> logits`` bound to the suite's module."""
  return lambda backbone, head, x: forward(suite.module, backbone, head, x)


def _unit_columns(w):
  return w / (jnp.linalg.norm(w, axis=0, keepdims=True) + 1e-6)


def _ce(logits, y):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def pretraining_set(x: np.ndarray, y: np.ndarray, *, copies: int = 8, seed: int = 0,
                    p_unchanged: float = 0.2, max_strength: float = 0.6,
                    p_full: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """The pretraining images and their ``domain * 10 + digit`` labels.

  The original images (domain 0) plus ``copies`` transformed copies of each: with
  probability ``p_unchanged`` unchanged (domain 0), otherwise a uniformly chosen family at
  strength ``U(0, max_strength)`` (``1`` with probability ``p_full``).
  """
  rng = np.random.default_rng(seed)
  n, fams = len(x), list(FAMILIES)
  xs, ys = [x], [y]
  for c in range(copies):
    dom = np.where(rng.random(n) < p_unchanged, 0, rng.integers(1, len(fams) + 1, n))
    st = np.where(rng.random(n) < p_full, 1.0, rng.uniform(0.0, max_strength, n))
    out = x.copy()
    for d in range(1, len(fams) + 1):
      sel = dom == d
      if sel.any():
        out[sel] = transform_images(fams[d - 1], x[sel], strength=st[sel],
                                    seed=seed * 1000 + c * 31 + d)
    xs.append(out)
    ys.append(dom * 10 + y)
  return np.concatenate(xs), np.concatenate(ys).astype(np.int32)


def build_suite(tasks: Sequence[str] = TASKS, *, seed: int = 0,
                hidden: Sequence[int] = (512, 512, 128), activation: str = "gelu",
                logit_scale: float = 10.0, copies: int = 8, pretrain_steps: int = 2000,
                pretrain_batch: int = 256, pretrain_lr: float = 3e-3,
                finetune_steps: int = 1000, finetune_batch: int = 64,
                finetune_lr: float = 0.01, momentum: float = 0.9,
                pretrain_fraction: float = 0.4, n_test: int = 400,
                n_val: int = 100) -> DigitsSuite:
  """Builds the suite: pretrained backbone, frozen task heads, fine-tuned experts.

  Args:
    tasks: task names from :data:`TASKS`.
    seed: seeds the split, the transformations and the initialisation.
    hidden: backbone widths (the last is the feature size; no activation after it).
    activation: the backbone's activation between layers.
    logit_scale: features are L2-normalised and multiplied by this before the cosine head.
    copies: transformed copies of each pretraining image (:func:`pretraining_set`).
    pretrain_steps, pretrain_batch, pretrain_lr: Adam pretraining on ``domain x digit``.
    finetune_steps, finetune_batch, finetune_lr, momentum: each expert's SGD (momentum)
      fine-tuning of the backbone through the task's frozen head.
    pretrain_fraction: share of the images used for pretraining only.
    n_test, n_val: per task, test and validation images (the rest of the non-pretraining
      images train the experts; the same image indices for every task).

  Raises:
    ValueError: unknown or repeated task names, no task, or too few images for the split.
  """
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  from jaxparams.models import MLP  # pylint: disable=import-outside-toplevel
  tasks = list(tasks)
  bad = [t for t in tasks if t not in TASK_FAMILIES]
  if bad or not tasks or len(set(tasks)) != len(tasks):
    raise ValueError(f"tasks must be distinct names from {sorted(TASK_FAMILIES)}, got {tasks}")
  d = load_digits()
  x = (d.data / 16.0).astype(np.float32)
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(x))
  n_pre = int(round(pretrain_fraction * len(x)))
  pre_idx, rest = perm[:n_pre], perm[n_pre:]
  if len(rest) <= n_test + n_val:
    raise ValueError(f"build_suite: {len(rest)} images after pretraining, need more than "
                     f"n_test + n_val = {n_test + n_val}")
  test, val, train = rest[:n_test], rest[n_test:n_test + n_val], rest[n_test + n_val:]

  module = MLP(features=tuple(hidden), activation=activation)
  k_bb, k_head, k_pre, k_ft = jax.random.split(jax.random.key(seed), 4)
  bb = module.init(k_bb, jnp.ones((1, 64)))["params"]
  n_cls = 10 * len(DOMAINS)
  head0 = jax.random.normal(k_head, (hidden[-1], n_cls)) / np.sqrt(hidden[-1])
  xp, yp = pretraining_set(x[pre_idx], y[pre_idx], copies=copies, seed=seed)
  xp, yp = jnp.asarray(xp), jnp.asarray(yp)
  scale = jnp.float32(logit_scale)

  def pre_loss(q, xb, yb):
    return _ce(forward(module, q["bb"], {"kernel": _unit_columns(q["w"]), "scale": scale}, xb),
               yb)

  @jax.jit
  def pretrain(p, key):
    opt = optax.adam(pretrain_lr)

    def step(carry, k):
      p, s = carry
      idx = jax.random.randint(k, (pretrain_batch,), 0, xp.shape[0])
      g = jax.grad(pre_loss)(p, xp[idx], yp[idx])
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (p, opt.init(p)),
                             jax.random.split(key, pretrain_steps))
    return p

  pre = pretrain({"bb": bb, "w": head0}, k_pre)
  pretrained, w_all = pre["bb"], _unit_columns(pre["w"])

  @jax.jit
  def finetune(head, xs, ys, key):
    opt = optax.sgd(finetune_lr, momentum=momentum)
    loss = lambda q, xb, yb: _ce(forward(module, q, head, xb), yb)

    def step(carry, k):
      p, s = carry
      idx = jax.random.randint(k, (finetune_batch,), 0, xs.shape[0])
      g = jax.grad(loss)(p, xs[idx], ys[idx])
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (pretrained, opt.init(pretrained)),
                             jax.random.split(key, finetune_steps))
    return p

  out_tasks, experts = [], []
  for i, name in enumerate(tasks):
    dom = DOMAINS.index(TASK_FAMILIES[name])
    head = {"kernel": w_all[:, dom * 10:(dom + 1) * 10], "scale": scale}
    xs = shift_images(name, x, seed=seed * 1000 + 500 + i)
    experts.append(finetune(head, jnp.asarray(xs[train]), jnp.asarray(y[train]),
                            jax.random.fold_in(k_ft, i)))
    out_tasks.append(Task(name, xs[train], y[train], xs[val], y[val], xs[test], y[test], head))
  return DigitsSuite(module, pretrained, experts, out_tasks, w_all)


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


def entropy_objective(suite: DigitsSuite, split: str = "test", *,
                      temperature: float | None = None,
                      batch_size: int | None = None) -> Callable:
  """AdaMerging's objective: summed prediction entropy on each task's *unlabelled* inputs.

  Args:
    suite: the suite.
    split: the unlabelled inputs: ``'test'`` (AdaMerging's choice), ``'val'``, or
      ``'test+train'`` (the test inputs and the experts' training inputs, labels unused).
    temperature: ``None``: entropy of the head's logits (the paper's); a number: entropy of
      ``softmax(cos / temperature)``, the head's cosine logits at a fixed scale whatever the
      head's logit scale.
    batch_size: ``None``: every input each call, ``f(backbone)``; a number: ``f(backbone,
      key)`` draws that many inputs per task (AdaMerging's code: 16 per task per step).
  """
  from jaxparams.merge.learned import entropy  # pylint: disable=import-outside-toplevel
  splits = {"test": lambda t: t.x_test, "val": lambda t: t.x_val,
            "test+train": lambda t: np.concatenate([t.x_test, t.x_train])}
  if split not in splits:
    raise ValueError(f"unknown split {split!r}; valid: {sorted(splits)}")
  xs = [jnp.asarray(splits[split](t)) for t in suite.tasks]
  heads = [t.head for t in suite.tasks]
  if temperature is not None:
    heads = [{**h, "scale": jnp.float32(1.0 / temperature)} for h in heads]
  if batch_size is None:
    return lambda bb: sum(entropy(forward(suite.module, bb, h, x)) for h, x in zip(heads, xs))

  def stochastic(bb, key):
    keys = jax.random.split(key, len(xs))
    return sum(entropy(forward(suite.module, bb, h,
                               x[jax.random.randint(k, (batch_size,), 0, x.shape[0])]))
               for h, x, k in zip(heads, xs, keys))

  return stochastic


def val_loss(suite: DigitsSuite) -> Callable:
  """Summed cross-entropy on the labelled validation images."""
  data = [(t.head, jnp.asarray(t.x_val), jnp.asarray(t.y_val)) for t in suite.tasks]
  return lambda bb: sum(_ce(forward(suite.module, bb, h, x), y) for h, x, y in data)


def val_error(suite: DigitsSuite) -> Callable:
  """``1 - mean validation accuracy`` over tasks (the black-box searches' fitness)."""
  acc = task_accuracies_fn(suite, split="val")
  return lambda bb: 1.0 - jnp.mean(acc(bb))


def task_accuracies_fn(suite: DigitsSuite, split: str = "test") -> Callable:
  """``f(backbone) -> [T]`` accuracies (traceable: vmap it over merged backbones)."""
  data = [(t.head, jnp.asarray(t.x_test if split == "test" else t.x_val),
           jnp.asarray(t.y_test if split == "test" else t.y_val)) for t in suite.tasks]
  return lambda bb: jnp.stack([jnp.mean(jnp.argmax(forward(suite.module, bb, h, x), -1) == y)
                               for h, x, y in data])


def correct_fn(suite: DigitsSuite, split: str = "val") -> Callable:
  """``f(backbone) -> {0, 1}[T * n]``: per-example correctness on every task (M2N2's scores)."""
  data = [(t.head, jnp.asarray(t.x_test if split == "test" else t.x_val),
           jnp.asarray(t.y_test if split == "test" else t.y_val)) for t in suite.tasks]
  return lambda bb: jnp.concatenate([
      (jnp.argmax(forward(suite.module, bb, h, x), -1) == y).astype(jnp.float32)
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
