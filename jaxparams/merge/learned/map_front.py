"""MAP (Li et al., ICLR 2025): amortized Pareto fronts of merge coefficients by quadratic surrogates.

For task arithmetic ``theta(c) = theta_0 + sum_n c_n tau_n`` each task metric is modelled as
``M~_t(c) = sigma(1/2 c^T A_t c + b_t^T c + e_t)`` (a second-order Taylor expansion around
``theta_0``; the sigmoid link keeps accuracies in ``(0, 1)`` as in MAP's code), fitted from a
small sample of evaluated ``c`` by least squares in logit space. The Pareto front is then
taken on the surrogate (cheap) instead of on evaluated merges. The paper searches the
surrogate with NSGA-III; here the surrogate is scanned on a dense grid, which for the small
``N`` of the suite finds its exact front.

Example:
  >>> import jax, jax.numpy as jnp
  >>> c = jnp.array([[0., 0.], [1., 0.], [0., 1.], [1., 1.], [.5, .5], [.2, .8], [.9, .1]])
  >>> m = jax.nn.sigmoid(1 + c[:, :1] - c[:, 1:] ** 2)
  >>> s = fit_surrogate(c, m)
  >>> bool(jnp.max(jnp.abs(predict_surrogate(s, c) - m)) < 1e-4)
  True
  >>> pareto_mask(jnp.array([[1., 0.], [0., 1.], [.4, .4], [.6, .6]])).tolist()
  [True, True, False, True]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["Surrogate", "fit_surrogate", "hypervolume_2d", "pareto_mask", "predict_surrogate",
           "quadratic_features"]


def quadratic_features(c: jax.Array) -> jax.Array:
  """``[1, c_i, c_i c_j (i <= j)]`` of coefficients ``c[..., N]`` -> ``[..., (N+1)(N+2)/2]``."""
  n = c.shape[-1]
  iu, ju = jnp.triu_indices(n)
  ones = jnp.ones(c.shape[:-1] + (1,), c.dtype)
  return jnp.concatenate([ones, c, c[..., iu] * c[..., ju]], axis=-1)


@dataclasses.dataclass(frozen=True)
class Surrogate:
  """Fitted quadratic surrogates: ``weights[F, T]`` over :func:`quadratic_features`; ``link``."""
  weights: jax.Array
  link: str


def fit_surrogate(c: jax.Array, metrics: jax.Array, *, link: str = "sigmoid",
                  eps: float = 1e-3) -> Surrogate:
  """Least-squares fit of one quadratic per task metric.

  Args:
    c: sampled coefficients ``[S, N]`` (S >= (N+1)(N+2)/2 for a determined fit).
    metrics: measured metrics ``[S, T]`` (accuracies in [0, 1] for ``link='sigmoid'``).
    link: ``'sigmoid'`` (fit in logit space) or ``'identity'``.
    eps: clip of accuracies away from 0 and 1 before the logit.

  Raises:
    ValueError: unknown link, or sample counts differ.
  """
  if link not in ("sigmoid", "identity"):
    raise ValueError(f"unknown link {link!r}; valid: ['identity', 'sigmoid']")
  c, metrics = jnp.asarray(c, jnp.float32), jnp.asarray(metrics, jnp.float32)
  if c.ndim != 2 or metrics.ndim != 2 or c.shape[0] != metrics.shape[0]:
    raise ValueError(f"fit_surrogate needs c [S, N] and metrics [S, T], got {c.shape} and "
                     f"{metrics.shape}")
  y = metrics
  if link == "sigmoid":
    y = jnp.clip(y, eps, 1 - eps)
    y = jnp.log(y) - jnp.log1p(-y)
  w, *_ = jnp.linalg.lstsq(quadratic_features(c), y)
  return Surrogate(w, link)


def predict_surrogate(s: Surrogate, c: jax.Array) -> jax.Array:
  """Surrogate metrics ``[..., T]`` at coefficients ``c[..., N]``."""
  z = quadratic_features(jnp.asarray(c, jnp.float32)) @ s.weights
  return jax.nn.sigmoid(z) if s.link == "sigmoid" else z


def pareto_mask(points: jax.Array) -> jax.Array:
  """``[P]`` mask of the non-dominated rows of ``points[P, T]`` (every metric maximised)."""
  p = jnp.asarray(points)
  ge = jnp.all(p[None, :, :] >= p[:, None, :], axis=-1)  # [i, j]: j >= i everywhere
  gt = jnp.any(p[None, :, :] > p[:, None, :], axis=-1)
  return ~jnp.any(ge & gt, axis=1)


def hypervolume_2d(points: jax.Array, ref: tuple[float, float] = (0.0, 0.0)) -> float:
  """Area dominated by 2-D ``points`` (maximised) above the reference point."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  p = np.asarray(points, np.float64)
  p = p[np.asarray(pareto_mask(p))]
  p = p[np.argsort(-p[:, 0])]
  area, prev_y = 0.0, ref[1]
  for x, y in p:
    if y > prev_y:
      area += (x - ref[0]) * (y - prev_y)
      prev_y = y
  return float(area)
