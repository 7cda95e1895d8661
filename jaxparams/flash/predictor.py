"""Low-rank predictors of active FFN neurons (LLM in a flash, section 3.1).

Per layer, ``score = (x @ A) @ B + b`` with ``A [H, r]``, ``B [r, I]`` predicts
from the FFN input ``x`` which neurons are active (``gate x > 0``). Trained with
binary cross-entropy on captured activations (:func:`jaxparams.flash.sparsity.ffn_inputs`);
each layer's threshold is then set on the training rows so that a target share
of the active neurons is recalled (the paper tunes predictors for recall: a
missed neuron changes the output, an extra one only costs a read).

Example:
  >>> import numpy as np
  >>> rng = np.random.default_rng(0)
  >>> x = rng.standard_normal((256, 8)).astype(np.float32)
  >>> w = rng.standard_normal((8, 16)).astype(np.float32)
  >>> act = x @ w > 0
  >>> (p,) = train_predictors([x], [act], rank=8, steps=300)
  >>> m = predictor_metrics([p], [x], [act])[0]
  >>> m['recall'] > 0.9 and m['precision'] > 0.8
  True
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxparams.calib.capture import intercept
from jaxparams.io import open_checkpoint, save_safetensors

__all__ = ["LayerPredictor", "train_predictors", "predictor_metrics", "save_predictors",
           "load_predictors", "expand_predictor", "predicted_loss", "predicted_perplexity"]


@dataclasses.dataclass(frozen=True)
class LayerPredictor:
  """One layer's low-rank predictor: active iff ``(x @ a) @ b + bias > threshold``."""
  a: np.ndarray        # [H, r]
  b: np.ndarray        # [r, I]
  bias: np.ndarray     # [I]
  threshold: float

  @property
  def nbytes(self) -> int:
    return int(self.a.nbytes + self.b.nbytes + self.bias.nbytes)

  def scores(self, x: jax.Array) -> jax.Array:
    """Logits ``[..., I]`` for FFN inputs ``x[..., H]``."""
    return (x @ self.a) @ self.b + self.bias


def _train_one(x: np.ndarray, y: np.ndarray, rank: int, steps: int, lr: float, batch: int,
               recall: float, key: jax.Array) -> LayerPredictor:
  h, n = x.shape[1], y.shape[1]
  k1, k2 = jax.random.split(key)
  p = {"a": jax.random.normal(k1, (h, rank)) / np.sqrt(h),
       "b": jax.random.normal(k2, (rank, n)) / np.sqrt(rank),
       "bias": jnp.full((n,), float(np.log(max(y.mean(), 1e-4) / max(1 - y.mean(), 1e-4))))}
  opt = optax.adam(optax.cosine_decay_schedule(lr, steps, 0.05))
  state = opt.init(p)
  xj, yj = jnp.asarray(x), jnp.asarray(y, jnp.float32)

  @jax.jit
  def step(p, s, idx):
    def loss(q):
      logits = (xj[idx] @ q["a"]) @ q["b"] + q["bias"]
      return optax.sigmoid_binary_cross_entropy(logits, yj[idx]).mean()
    val, g = jax.value_and_grad(loss)(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, val

  rng = np.random.default_rng(0)
  for _ in range(steps):
    p, state, _ = step(p, state, jnp.asarray(rng.integers(0, x.shape[0], min(batch, x.shape[0]))))
  pred = LayerPredictor(*(np.asarray(p[k], np.float32) for k in ("a", "b", "bias")), 0.0)
  s = np.asarray(pred.scores(xj))
  pos = s[np.asarray(y, bool)]
  thr = float(np.quantile(pos, 1.0 - recall)) if pos.size else 0.0
  return dataclasses.replace(pred, threshold=min(thr, 0.0))


def train_predictors(xs: Sequence[np.ndarray], active: Sequence[np.ndarray], *, rank: int = 64,
                     steps: int = 500, learning_rate: float = 1e-2, batch: int = 512,
                     recall: float = 0.99, seed: int = 0) -> list[LayerPredictor]:
  """Trains one predictor per layer from FFN inputs ``xs[l] [n, H]`` and ``active[l] [n, I]``.

  Args:
    rank: the low rank ``r``.
    steps, learning_rate, batch: Adam on binary cross-entropy.
    recall: target share of active neurons recalled on the training rows; the threshold
      is the ``1 - recall`` quantile of the active neurons' scores (never above 0).
  """
  if len(xs) != len(active) or not xs:
    raise ValueError(f"train_predictors: {len(xs)} input sets vs {len(active)} activity sets")
  if not 0.0 < recall <= 1.0:
    raise ValueError(f"train_predictors: recall must be in (0, 1], got {recall}")
  out = []
  for i, (x, y) in enumerate(zip(xs, active)):
    if x.shape[0] != y.shape[0]:
      raise ValueError(f"train_predictors: layer {i}: {x.shape[0]} input rows vs {y.shape[0]} "
                       "activity rows")
    out.append(_train_one(np.asarray(x, np.float32), np.asarray(y, bool), rank, steps,
                          learning_rate, batch, recall, jax.random.key(seed + i)))
  return out


def predictor_metrics(preds: Sequence[LayerPredictor], xs: Sequence[np.ndarray],
                      active: Sequence[np.ndarray]) -> list[dict[str, float]]:
  """Per layer: recall and precision of the predicted active set, and its size vs the true one."""
  out = []
  for p, x, y in zip(preds, xs, active):
    hat = np.asarray(p.scores(jnp.asarray(x, jnp.float32))) > p.threshold
    y = np.asarray(y, bool)
    tp = float((hat & y).sum())
    out.append({"recall": tp / max(float(y.sum()), 1.0), "precision": tp / max(float(hat.sum()), 1.0),
                "active_fraction": float(y.mean()), "predicted_fraction": float(hat.mean())})
  return out


def expand_predictor(p: LayerPredictor, mapping: np.ndarray,
                     hidden_mapping: np.ndarray | None = None) -> LayerPredictor:
  """The predictor of a layer grown by Net2Net widening.

  Args:
    p: the small layer's predictor.
    mapping: neuron ``j`` of the grown FFN copies neuron ``mapping[j]``
      (:func:`jaxparams.scale.widen_llama_ffn`).
    hidden_mapping: hidden unit ``j`` of the grown residual stream copies unit
      ``hidden_mapping[j]`` (:func:`jaxparams.scale.widen_llama_hidden`): ``a``'s rows are
      copied and divided by their replication count, so the scores are unchanged.

  Example:
    >>> p = LayerPredictor(np.ones((2, 1), np.float32), np.arange(3, dtype=np.float32)[None],
    ...                    np.zeros(3, np.float32), 0.0)
    >>> expand_predictor(p, np.array([0, 1, 2, 2, 1])).b.tolist()
    [[0.0, 1.0, 2.0, 2.0, 1.0]]
    >>> expand_predictor(p, np.arange(3), np.array([0, 1, 0, 1])).a.ravel().tolist()
    [0.5, 0.5, 0.5, 0.5]
  """
  mapping = np.asarray(mapping)
  a = p.a
  if hidden_mapping is not None:
    g = np.asarray(hidden_mapping)
    if g.min(initial=0) < 0 or g.max(initial=0) >= a.shape[0]:
      raise ValueError(f"expand_predictor: hidden_mapping refers to units outside "
                       f"[0, {a.shape[0]})")
    counts = np.bincount(g, minlength=a.shape[0])[g]
    a = (a[g] / counts[:, None]).astype(p.a.dtype)
  return LayerPredictor(np.ascontiguousarray(a), np.ascontiguousarray(p.b[:, mapping]),
                        np.ascontiguousarray(p.bias[mapping]), p.threshold)


def save_predictors(preds: Sequence[LayerPredictor], out_dir: str | Path, *,
                    overwrite: bool = False) -> Path:
  """Writes predictors as safetensors: ``layers.{l}.{a,b,bias,threshold}``."""
  tensors = {}
  for i, p in enumerate(preds):
    tensors.update({f"layers.{i}.a": p.a, f"layers.{i}.b": p.b, f"layers.{i}.bias": p.bias,
                    f"layers.{i}.threshold": np.asarray([p.threshold], np.float32)})
  save_safetensors(tensors, out_dir, overwrite=overwrite)
  return Path(out_dir)


_PARTS = ("a", "b", "bias", "threshold")
# Module paths of any layer's FFN gate and output projections (``layers_3/mlp/gate_proj``).
_FFN = re.compile(r"(?:.*/)?[^/]+/mlp/(?:gate_proj|down_proj)")


def load_predictors(path: str | Path) -> list[LayerPredictor]:
  """Reads predictors written by :func:`save_predictors`.

  Raises:
    ValueError: a layer's tensors missing.
  """
  with open_checkpoint(path) as r:
    names = set(r.names())
    layers = {k.split(".")[1] for k in names if k.startswith("layers.")}
    n = len(layers)
    missing = [f"layers.{i}.{s}" for i in range(n) for s in _PARTS if f"layers.{i}.{s}" not in names]
    if not n or missing:
      raise ValueError(f"{path}: not a predictor checkpoint (missing "
                       f"{missing[:4] or ['layers.0.a']})")
    arrays = {k: np.array(r.read(k)) for k in names}
  return [LayerPredictor(arrays[f"layers.{i}.a"], arrays[f"layers.{i}.b"],
                         arrays[f"layers.{i}.bias"], float(arrays[f"layers.{i}.threshold"][0]))
          for i in range(n)]


def predicted_loss(module, params, preds: Sequence[LayerPredictor], ids: jax.Array) -> jax.Array:
  """Mean next-token loss when each FFN keeps only the neurons its predictor marks active.

  Exact sparse inference with the learned predictors, in memory (without the runtime's
  window, which only adds neurons back): the input of ``down_proj`` is masked by
  ``score(x) > threshold`` of the FFN input ``x`` (flax method interception through
  :func:`jaxparams.calib.capture.intercept`).
  """
  def run(p, x):
    seen: dict[str, jax.Array] = {}

    def hook(path, next_fun, a, kw):  # path: '<block>/mlp/gate_proj' or '<block>/mlp/down_proj'
      *_, block, _, name = path.split("/")
      layer = int(block.split("_")[-1])
      if name == "gate_proj":
        seen[block] = a[0]
      else:
        pr = preds[layer]
        keep = pr.scores(seen[block].astype(jnp.float32)) > pr.threshold
        a = (a[0] * keep.astype(a[0].dtype),) + tuple(a[1:])
      return next_fun(*a, **kw)

    with intercept({_FFN: hook}):
      logits = module.apply({"params": p}, x[:, :-1]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean()

  return run(params, ids)


def predicted_perplexity(module, params, preds: Sequence[LayerPredictor], batches) -> float:
  """``exp`` of :func:`predicted_loss` averaged over ``batches``."""
  f = jax.jit(lambda p, x: predicted_loss(module, p, preds, x))
  losses = [float(f(params, jnp.asarray(b))) for b in batches]
  if not losses:
    raise ValueError("predicted_perplexity: no batches")
  return float(np.exp(np.mean(losses)))
