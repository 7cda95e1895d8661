"""scikit-learn digits as a distribution-shift benchmark: splits, shifts, a source classifier.

Shifts (each ``fn(x[n, 8, 8] in [0, 1], rng) -> x``, at one fixed severity): ``noise``
(Gaussian, σ 0.3), ``blur`` (Gaussian, σ 0.8 px), ``rotate`` (±25°), ``shift`` (±1.5 px
translation), ``contrast`` (×0.4 around the image mean), ``invert_half`` (half the pixels'
intensity flipped: salt noise). :func:`shift_stream` chains them into one test stream.

Example:
  >>> import numpy as np
  >>> x = np.zeros((2, 8, 8), np.float32)
  >>> sorted(SHIFTS)[:3]
  ['blur', 'contrast', 'invert_half']
  >>> apply_shift('noise', x, np.random.default_rng(0)).shape
  (2, 8, 8)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["SHIFTS", "SHIFT_ORDER", "apply_shift", "load_splits", "shift_stream", "train_source",
           "accuracy", "compare_tta"]


def _noise(x, rng):
  return x + rng.normal(0.0, 0.3, x.shape)


def _blur(x, rng):
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  del rng
  return ndimage.gaussian_filter(x, sigma=(0, 0.8, 0.8))


def _rotate(x, rng):
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  angles = rng.uniform(-25, 25, len(x))
  return np.stack([ndimage.rotate(im, a, reshape=False, order=1) for im, a in zip(x, angles)])


def _shift(x, rng):
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  offs = rng.uniform(-1.5, 1.5, (len(x), 2))
  return np.stack([ndimage.shift(im, o, order=1) for im, o in zip(x, offs)])


def _contrast(x, rng):
  del rng
  m = x.mean(axis=(1, 2), keepdims=True)
  return (x - m) * 0.4 + m


def _invert_half(x, rng):
  flip = rng.random(x.shape) < 0.15
  return np.where(flip, 1.0 - x, x)


SHIFTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "noise": _noise, "blur": _blur, "rotate": _rotate, "shift": _shift, "contrast": _contrast,
    "invert_half": _invert_half}


def apply_shift(name: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Applies shift ``name`` to images ``x[n, 8, 8]`` (values clipped to ``[0, 1]``, float32).

  Raises:
    ValueError: for an unknown name (listing the valid ones).
  """
  if name not in SHIFTS:
    raise ValueError(f"unknown digits shift {name!r}; valid: {', '.join(sorted(SHIFTS))}")
  return np.clip(SHIFTS[name](np.asarray(x, np.float64), rng), 0.0, 1.0).astype(np.float32)


def load_splits(seed: int = 0) -> dict[str, np.ndarray]:
  """Digits (1797 images, pixel values / 16) split 60/20/20: ``x_train, y_train, x_val, y_val,
  x_test, y_test``; ``x_*`` are ``float32[n, 8, 8]``."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(x))
  a, b = int(0.6 * len(x)), int(0.8 * len(x))
  parts = {"train": perm[:a], "val": perm[a:b], "test": perm[b:]}
  out = {}
  for name, idx in parts.items():
    out[f"x_{name}"], out[f"y_{name}"] = x[idx], y[idx]
  return out


def shift_stream(x: np.ndarray, y: np.ndarray, names: list[str] | tuple[str, ...],
                 seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
  """``[(shift, shifted x, y), ...]``: the test set under each shift, in order (one stream)."""
  rng = np.random.default_rng(seed)
  return [(n, apply_shift(n, x, rng), y) for n in names]


def train_source(model: Any, x: np.ndarray, y: np.ndarray, *, steps: int = 400,
                 batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> Any:
  """Trains ``model`` (e.g. :class:`jaxparams.models.digits_cnn.DigitsCNN`) with Adam on clean
  data; returns its params."""
  params = model.init(jax.random.key(seed), jnp.zeros((2, 64)))["params"]
  tx = optax.adam(lr)

  @jax.jit
  def step(p, s, xb, yb):
    def loss(q):
      return optax.softmax_cross_entropy_with_integer_labels(
          model.apply({"params": q}, xb), yb).mean()
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  rng = np.random.default_rng(seed)
  xf = x.reshape(len(x), -1)
  for _ in range(steps):
    idx = rng.integers(0, len(x), batch_size)
    params, state = step(params, state, xf[idx], y[idx])
  return params


def accuracy(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, x: np.ndarray,
             y: np.ndarray, batch_size: int = 64) -> float:
  """Accuracy in batches of ``batch_size`` (batch-statistics norms see test batches)."""
  xf = x.reshape(len(x), -1)
  correct = 0
  for i in range(0, len(x), batch_size):
    logits = apply_fn(params, xf[i:i + batch_size])
    correct += int(np.sum(np.argmax(np.asarray(logits), -1) == y[i:i + batch_size]))
  return correct / len(x)


SHIFT_ORDER = ("noise", "blur", "rotate", "shift", "contrast", "invert_half")


def compare_tta(lr: float = 0.1, rounds: int = 2, batch_size: int = 64, d_margin: float = 0.4,
                fisher_alpha: float = 2000.0, seed: int = 0, source_steps: int = 400) -> dict:
  """Source model vs Tent vs EATA on one continual stream of shifted test sets.

  A :class:`jaxparams.models.digits_cnn.DigitsCNN` is trained on clean digits; the test split
  under each shift of ``SHIFT_ORDER`` (``rounds`` times) is streamed in batches; Tent and EATA
  adapt continually (no reset). Returns ``{'clean_before', 'source'|'tent'|'eata': {'per_shift':
  {'round:shift': acc}, 'mean', 'clean_after', 'used' (share of samples that drove updates)}}``.
  """
  from jaxparams.models.digits_cnn import DigitsCNN  # pylint: disable=g-import-not-at-top
  from jaxparams.train import eata  # pylint: disable=g-import-not-at-top
  data = load_splits(seed)
  model = DigitsCNN()
  apply_fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
  params = train_source(model, data["x_train"], data["y_train"], steps=source_steps, seed=seed)
  stream = shift_stream(data["x_test"], data["y_test"], SHIFT_ORDER * rounds, seed=seed)
  xval = data["x_val"].reshape(len(data["x_val"]), -1)
  fisher = eata.fisher_diagonal(apply_fn, params, xval, batch_size=batch_size)
  cfg = eata.EATAConfig(lr=lr, d_margin=d_margin, fisher_alpha=fisher_alpha)
  out = {"clean_before": accuracy(apply_fn, params, data["x_test"], data["y_test"])}
  for method in ("source", "tent", "eata"):
    if method != "source":
      state, step, params_of = eata.make_adapter(
          apply_fn, params, method=method, config=cfg, num_classes=10,
          fisher=fisher if method == "eata" else None)
    per_shift, n_seen = {}, 0
    for i, (name, x, y) in enumerate(stream):
      rng = np.random.default_rng([seed, i])
      order = rng.permutation(len(x))
      x, y = x[order].reshape(len(x), -1), y[order]
      correct = 0
      for j in range(0, len(x), batch_size):
        xb = x[j:j + batch_size]
        if method == "source":
          logits = apply_fn(params, xb)
        else:
          state, logits = step(state, xb)
        correct += int(np.sum(np.argmax(np.asarray(logits), -1) == y[j:j + batch_size]))
        n_seen += len(xb)
      per_shift[f"{i // len(SHIFT_ORDER)}:{name}"] = correct / len(x)
    final = params if method == "source" else params_of(state)
    out[method] = {"per_shift": per_shift, "mean": float(np.mean(list(per_shift.values()))),
                   "clean_after": accuracy(apply_fn, final, data["x_test"], data["y_test"])}
    if method != "source":
      out[method]["used"] = int(state.n_selected) / n_seen
  return out
