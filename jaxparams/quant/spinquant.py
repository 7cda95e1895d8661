"""Learned rotations (SpinQuant, Liu et al. 2024): Cayley SGD on the Stiefel manifold.

SpinQuant starts its rotations from a random Hadamard and learns them with ``SGDG``
(Li et al.'s Cayley SGD, ``stiefel=True``): with ``G = dL/dR``,

    M = -G,  M^ = M R^T - 1/2 R R^T M R^T,   Y = M^ - M^^T   (skew-symmetric),
    R <- (I - lr/2 Y)^-1 (I + lr/2 Y) R,

a Cayley retraction, so ``R`` stays orthogonal (SpinQuant solves the inverse by a short
fixed-point loop; here ``jnp.linalg.solve``). SpinQuant's defaults: lr 1.5 with a cosine
schedule, 100 steps, the model's next-token loss with quantized activations.

Here the rotations are learned *block by block through the calibration layer*
(:func:`jaxparams.quant.outliers.quantize_outliers` captures each block's layer inputs with
:func:`jaxparams.calib.capture_inputs` from the already quantized blocks): each online rotation
``R`` of a Linear minimises that layer's relative output error with RTN-fake-quantized weights
``R^T W`` and (optionally) per-token-quantized activations ``x R``, straight-through
gradients (:func:`layer_loss`). This is a layer-wise surrogate of SpinQuant's end-to-end loss
(no backward pass through the whole model: the CPU budget here), and it learns the online
rotations (o_proj and down_proj inputs of the decoders, every Linear of BERT/Gemma); the
residual rotation of the decoders stays the folded Hadamard. The best iterate is kept, so the
result is never worse than the Hadamard start on the calibration rows.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> r = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))[0], jnp.float32)
  >>> g = jax.random.normal(jax.random.key(0), (8, 8))
  >>> r2 = cayley_step(r, g, 0.5)
  >>> bool(jnp.allclose(r2.T @ r2, jnp.eye(8), atol=1e-5))
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.quant.act_quant import fake_quant_weight, quantize_activations

__all__ = ["LearnConfig", "cayley_step", "layer_loss", "learn_rotation"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LearnConfig:
  """Cayley SGD settings of :func:`learn_rotation`.

  Attributes:
    steps: iterations per rotation (SpinQuant: 100 on the whole model).
    lr: initial learning rate, cosine-decayed to 0 (SpinQuant: 1.5 on its loss).
    rows: calibration rows (tokens) used per layer (a seeded subsample).
  """
  steps: int = 40
  lr: float = 0.5
  rows: int = 1024

  def __post_init__(self):
    if self.steps < 0 or self.lr <= 0 or self.rows < 1:
      raise ValueError(f"LearnConfig: steps >= 0, lr > 0 and rows >= 1 needed, got {self}")


def cayley_step(r: jax.Array, g: jax.Array, lr: jax.Array | float) -> jax.Array:
  """One Cayley SGD descent step of ``R`` for the loss gradient ``G`` (module doc; Li et al.'s
  ``M = -G``: the update moves against the gradient)."""
  m = -g
  ghat = m @ r.T - 0.5 * r @ (r.T @ m @ r.T)
  y = ghat - ghat.T
  eye = jnp.eye(r.shape[0], dtype=r.dtype)
  return jnp.linalg.solve(eye - 0.5 * lr * y, (eye + 0.5 * lr * y) @ r)


def layer_loss(r: jax.Array, x: jax.Array, w: jax.Array, *, bits: int, group: int,
               act_bits: int = 0, act_clip: float = 1.0) -> jax.Array:
  """``||x W - Qa(x R) Qw(R^T W)||^2 / ||x W||^2`` (straight-through quantizers)."""
  ref = x @ w
  xr = x @ r
  if act_bits:
    xr = quantize_activations(xr, act_bits, act_clip)
  wq = fake_quant_weight(r.T @ w, bits, group) if bits else r.T @ w
  return jnp.sum((xr @ wq - ref) ** 2) / jnp.maximum(jnp.sum(ref ** 2), 1e-30)


def learn_rotation(x: Any, w: Any, r0: Any, *, bits: int, group: int, act_bits: int = 0,
                   act_clip: float = 1.0, cfg: LearnConfig = LearnConfig(), seed: int = 0
                   ) -> tuple[np.ndarray, float, float]:
  """Learns an orthogonal ``R`` from ``r0`` for one Linear (inputs ``x[n, K]``, weight ``W[K, N]``).

  Returns:
    ``(R, loss at r0, best loss)``; ``R`` float32 ``[K, K]``.
  """
  x = np.asarray(x, np.float32)
  if x.shape[0] > cfg.rows:
    x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], cfg.rows, replace=False))]
  x, w = jnp.asarray(x), jnp.asarray(w, jnp.float32)
  r0 = jnp.asarray(r0, jnp.float32)
  loss = lambda r: layer_loss(r, x, w, bits=bits, group=group, act_bits=act_bits,
                              act_clip=act_clip)
  vg = jax.value_and_grad(loss)
  steps = cfg.steps

  @jax.jit
  def run(r):
    def body(t, c):
      r, best_r, best = c
      val, g = vg(r)
      better = val < best
      best_r = jnp.where(better, r, best_r)
      best = jnp.where(better, val, best)
      lr = cfg.lr * 0.5 * (1 + jnp.cos(jnp.pi * t / steps))
      gn = jnp.linalg.norm(g)
      r = cayley_step(r, g / jnp.maximum(gn, 1e-30), lr)   # normalised: lr = step length
      return r, best_r, best
    r, best_r, best = jax.lax.fori_loop(0, steps, body, (r, r, jnp.inf))
    last = loss(r)
    return jnp.where(last < best, r, best_r), jnp.minimum(last, best)

  start = float(loss(r0))
  if steps == 0:
    return np.asarray(r0), start, start
  r, best = run(r0)
  if not float(best) < start:      # never worse than the start
    return np.asarray(r0), start, start
  return np.asarray(r), start, float(best)
