"""MACPruning: random input-pixel deactivation against side-channel weight extraction.

At every inference a fresh random map switches off a fraction of the input pixels, and the
multiply-accumulates that use them are skipped (Ding et al., HOST 2025). The random pixel
activation map (RPAM) draws the switched-off pixels uniformly; the importance-aware map (IaPAM)
always keeps the most important pixels (by gradient saliency on data) and draws the rest among
the others, which preserves accuracy. Skipping the MACs of a switched-off pixel is, for the
function computed, the same as multiplying the pixel by zero before the first layer: that is
how the masked forward is written here (the MAC skipping itself is the device's business).

Example:
  >>> import jax, jax.numpy as jnp
  >>> imp = jnp.arange(10.0)                       # pixel 9 most important
  >>> m = pixel_mask(jax.random.key(0), imp, ratio=0.5, protect=0.2)
  >>> int(m.sum()), bool(m[9] & m[8])              # 5 pixels off, the top 2 always on
  (5, True)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["importance_map", "masked_apply", "pixel_mask"]


def importance_map(loss_fn: Callable[..., jax.Array], params: Any, x: jax.Array,
                   *args: Any, kind: str = "grad_x_input") -> jax.Array:
  """Saliency per input feature, averaged over a batch.

  ``kind='grad_x_input'`` (default) is ``mean |x * d loss / d x|``: a pixel that is always 0
  scores 0 however large its gradient; ``kind='grad'`` is ``mean |d loss / d x|``.

  Args:
    loss_fn: ``loss_fn(params, x, *args) -> scalar``.
    params: model parameters.
    x: ``[batch, features]`` inputs.
    *args: further arguments of ``loss_fn`` (labels...).
    kind: ``'grad_x_input'`` or ``'grad'``.

  Returns:
    ``[features]`` importance.

  Example:
    >>> f = lambda p, x: jnp.sum(x * jnp.array([0., 2., -3.]))
    >>> importance_map(f, None, jnp.ones((4, 3))).tolist()
    [0.0, 2.0, 3.0]
  """
  if kind not in ("grad_x_input", "grad"):
    raise ValueError(f"importance_map: kind must be 'grad_x_input' or 'grad', got {kind!r}")
  g = jax.grad(lambda xx: loss_fn(params, xx, *args))(x)
  return jnp.mean(jnp.abs(g * x if kind == "grad_x_input" else g), axis=0)


def pixel_mask(key: jax.Array, importance: jax.Array | None, ratio: float, *,
               protect: float = 0.0, n: int | None = None) -> jax.Array:
  """One inference's activation map: ``floor(ratio * n)`` pixels switched off.

  Args:
    key: PRNG key of this inference.
    importance: ``[n]`` importance (IaPAM) or None (RPAM: uniform).
    ratio: fraction of pixels deactivated.
    protect: fraction of the most important pixels never deactivated (IaPAM); with
      ``protect=0`` the draw is weighted by ``1 - importance / max`` instead, so important pixels
      are rarely switched off.
    n: number of pixels (when ``importance`` is None).

  Returns:
    ``[n]`` bool, ``True`` = pixel active.
  """
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"MACPruning: deactivation ratio must be in [0, 1), got {ratio}")
  if not 0.0 <= protect < 1.0 or ratio + protect > 1.0:
    raise ValueError(f"MACPruning: protect must be in [0, 1) with ratio + protect <= 1, got "
                     f"protect={protect}, ratio={ratio}")
  if importance is None:
    if n is None:
      raise ValueError("pixel_mask: give importance or n")
    score = jax.random.uniform(key, (n,))
  else:
    n = importance.shape[0]
    imp = importance / jnp.maximum(jnp.max(importance), 1e-30)
    u = jax.random.uniform(key, (n,))
    k_protect = int(math.floor(protect * n))
    rank = jnp.argsort(jnp.argsort(-imp, stable=True), stable=True)
    critical = rank < k_protect
    if protect > 0:
      score = jnp.where(critical, 2.0, u)
    else:   # weighted sampling without replacement (Gumbel top-k on log(1 - imp))
      score = -(jnp.log(jnp.maximum(1.0 - imp, 1e-6)) + (-jnp.log(-jnp.log(u))))
  n_off = int(math.floor(ratio * n))
  order = jnp.argsort(score, stable=True)
  off = jnp.zeros((n,), bool).at[order[:n_off]].set(True)
  return ~off


def masked_apply(apply_fn: Callable[[jax.Array], jax.Array], x: jax.Array, key: jax.Array,
                 importance: jax.Array | None, ratio: float, *, protect: float = 0.0
                 ) -> jax.Array:
  """Runs ``apply_fn`` on a batch with a fresh activation map per example.

  Example:
    >>> out = masked_apply(lambda x: x.sum(-1), jnp.ones((3, 8)), jax.random.key(0), None, 0.25)
    >>> out.tolist()
    [6.0, 6.0, 6.0]
  """
  keys = jax.random.split(key, x.shape[0])
  masks = jax.vmap(lambda k: pixel_mask(k, importance, ratio, protect=protect,
                                        n=x.shape[-1]))(keys)
  return apply_fn(jnp.where(masks, x, jnp.zeros_like(x)))
