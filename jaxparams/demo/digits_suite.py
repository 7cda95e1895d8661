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

__all__ = ["SHIFTS", "DigitsSuite", "Task", "build_suite", "evaluate", "forward", "logits_fn",
           "shift_images"]

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
                hidden: Sequence[int] = (128, 64), pretrain_steps: int = 300,
                probe_steps: int = 200, finetune_steps: int = 150, lr: float = 3e-3,
                finetune_lr: float = 1e-3, n_val: int = 100) -> DigitsSuite:
  """Builds the suite: pretrained backbone, per-task heads and fine-tuned experts.

  Args:
    tasks: shift names from :data:`SHIFTS` (one task each).
    seed: seeds the split, the shifts' randomness and the initialisation.
    hidden: backbone widths (the last is the feature size the heads read).
    pretrain_steps: full-batch Adam steps on the original digits.
    probe_steps: steps of each task's linear probe on frozen pretrained features.
    finetune_steps: steps of each expert's backbone fine-tuning (head frozen).
    lr: Adam learning rate of pretraining and probes.
    finetune_lr: Adam learning rate of the experts' fine-tuning.
    n_val: labelled validation images per task taken from the training split.

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
  xtr, ytr = jnp.asarray(x[train]), jnp.asarray(y[train])

  @jax.jit
  def pretrain(p):
    return _fit(lambda q: _ce(forward(module, q["bb"], q["head"], xtr), ytr), p, pretrain_steps, lr)

  pretrained = pretrain({"bb": bb, "head": head0})["bb"]

  @jax.jit
  def probe_then_finetune(h, xs, ys):
    h = _fit(lambda q: _ce(forward(module, pretrained, q, xs), ys), h, probe_steps, lr)
    e = _fit(lambda q: _ce(forward(module, q, h, xs), ys), pretrained, finetune_steps,
             finetune_lr)
    return h, e

  out_tasks, experts = [], []
  for i, name in enumerate(tasks):
    xs = shift_images(name, x, seed=seed + 1000 + i)
    h, e = probe_then_finetune(head0, jnp.asarray(xs[train]), ytr)
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
