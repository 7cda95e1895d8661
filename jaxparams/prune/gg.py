"""Generalized-Gaussian (GG) priors of weights: shape/scale fits, sampling and GG initialisation.

Density ``f(x) = nu / (2 beta Gamma(1/nu)) * exp(-(|x - mu| / beta) ** nu)``; ``nu = 2`` is a
Gaussian, ``nu = 1`` a Laplacian. Two estimators of ``(nu, beta)``:

* ``'moments'`` (the reference code of "It Takes a Good Model to Train a Good Model", the
  default): ``rho = n * sum x^2 / (sum |x|)^2`` (uncentred) is matched to
  ``Gamma(1/nu) Gamma(3/nu) / Gamma(2/nu)^2`` on the table ``nu in [0.1, 3.0]`` step 0.01, and
  ``beta = sigma * sqrt(Gamma(1/nu) / Gamma(3/nu))``.
* ``'mle'`` (the paper's wording): maximises the profile likelihood over ``nu`` (``beta`` in
  closed form for each ``nu``: ``beta^nu = nu / n * sum |x|^nu``) on a log grid refined twice.

Example:
  >>> import jax
  >>> x = gg_sample(jax.random.key(0), (200_000,), nu=1.0, beta=0.5)
  >>> nu, beta = fit_gg(x)
  >>> round(nu, 1), round(beta, 2)
  (1.0, 0.5)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from jaxparams.tree.summary import gg_shape_from_ratio

__all__ = ["fit_gg", "gg_init", "gg_ratio", "gg_reinit", "gg_sample", "gg_summary"]

def gg_ratio(nu: Any) -> Any:
  """``Gamma(1/nu) Gamma(3/nu) / Gamma(2/nu)^2`` (``pi/2`` for a Gaussian, 2 for a Laplacian).

  Example:
    >>> [round(float(gg_ratio(v)), 4) for v in (0.5, 1.0, 2.0, 3.0)]
    [3.3333, 2.0, 1.5708, 1.461]
  """
  nu = jnp.asarray(nu, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
  return jnp.exp(gammaln(1 / nu) + gammaln(3 / nu) - 2 * gammaln(2 / nu))


def _stats(x: Any) -> tuple[float, float, int]:
  x = np.asarray(x, np.float64).ravel()
  if x.size < 2:
    raise ValueError(f"fit_gg needs at least 2 values, got {x.size}")
  if not np.all(np.isfinite(x)):
    raise ValueError("fit_gg: values contain NaN or Inf")
  return float(np.sum(x * x)), float(np.sum(np.abs(x))), x.size


def fit_gg(x: Any, *, method: str = "moments") -> tuple[float, float]:
  """Fits the GG shape ``nu`` and scale ``beta`` of ``x`` (location 0, as the reference).

  Args:
    x: values (any shape).
    method: ``'moments'`` (reference, table on [0.1, 3.0]) or ``'mle'``.

  Returns:
    ``(nu, beta)`` as Python floats.
  """
  s2, s1, n = _stats(x)
  if s1 == 0:
    raise ValueError("fit_gg: all values are zero")
  sigma = math.sqrt(s2 / n)
  if method == "moments":
    nu = gg_shape_from_ratio(n * s2 / (s1 * s1))
  elif method == "mle":
    a = np.abs(np.asarray(x, np.float64).ravel())
    a = a[a > 0]

    def profile(v: float) -> float:
      beta = (v / n * np.sum(a ** v)) ** (1 / v)
      return n * (math.log(v) - math.log(2 * beta) - math.lgamma(1 / v)) - n / v

    lo, hi = math.log(0.05), math.log(20.0)
    for _ in range(3):
      grid = np.exp(np.linspace(lo, hi, 41))
      vals = [profile(v) for v in grid]
      i = int(np.argmax(vals))
      lo, hi = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, 40)])
    nu = float(grid[i])
  else:
    raise ValueError(f"fit_gg: method must be 'moments' or 'mle', got {method!r}")
  beta = sigma * math.sqrt(math.exp(math.lgamma(1 / nu) - math.lgamma(3 / nu)))
  if method == "mle":
    beta = float((nu / n * np.sum(np.abs(np.asarray(x, np.float64)) ** nu)) ** (1 / nu))
  return nu, float(beta)


def gg_sample(key: jax.Array, shape: tuple[int, ...], nu: float, beta: float,
              dtype: Any = jnp.float32) -> jax.Array:
  """Draws GG(nu, 0, beta) values: ``|x| = beta * G^(1/nu)``, ``G ~ Gamma(1/nu)``, random sign.

  Example:
    >>> x = gg_sample(jax.random.key(1), (100_000,), nu=2.0, beta=1.0)
    >>> round(float(x.std()), 2)     # sigma = beta * sqrt(Gamma(3/2) / Gamma(1/2)) = 0.707
    0.71
  """
  if not (nu > 0 and beta > 0):
    raise ValueError(f"gg_sample needs nu > 0 and beta > 0, got nu={nu}, beta={beta}")
  k1, k2 = jax.random.split(key)
  g = jax.random.gamma(k1, 1.0 / nu, shape, dtype=jnp.float32)
  sign = jnp.where(jax.random.bernoulli(k2, 0.5, shape), 1.0, -1.0)
  return (sign * beta * g ** (1.0 / nu)).astype(dtype)


def gg_init(nu: float = 2.0, xi: float = 2.0, mode: str = "fan_out") -> Callable[..., jax.Array]:
  """A Flax kernel initializer drawing from GG(nu) with variance ``xi / n_dim`` for any ``nu``.

  The reference scales by ``param.shape[0]`` of a torch Linear (its output features): for a Flax
  kernel ``[in, out]`` that is ``shape[-1]`` (``mode='fan_out'``, the default). ``mode='fan_in'``
  uses ``shape[0]`` and so matches the variance of He/LeCun init (``xi`` 2 or 1). ``xi`` is 2 for
  ReLU, 1 for none/sigmoid.

  Example:
    >>> init = gg_init(nu=1.0, xi=2.0)
    >>> w = init(jax.random.key(0), (512, 4096))
    >>> round(float(w.std()), 4)
    0.0221
  """
  if not (nu > 0 and xi > 0):
    raise ValueError(f"gg_init needs nu > 0 and xi > 0, got nu={nu}, xi={xi}")
  if mode not in ("fan_out", "fan_in"):
    raise ValueError(f"gg_init: mode must be 'fan_out' or 'fan_in', got {mode!r}")

  def init(key, shape, dtype=jnp.float32):
    n_dim = shape[-1] if mode == "fan_out" else math.prod(shape[:-1])
    alpha = math.sqrt(xi / n_dim * math.exp(math.lgamma(1 / nu) - math.lgamma(3 / nu)))
    return gg_sample(key, tuple(shape), nu, alpha, dtype)

  return init


def gg_reinit(params: Any, key: jax.Array, *, nu: float, where: Any = None) -> Any:
  """Redraws the selected leaves from GG(nu) with each leaf's own standard deviation.

  Applied to a freshly initialised tree, this is GG initialisation variance-matched to the
  model's standard init (whatever it is: LeCun, normal(0.02), ...): each leaf ``w`` becomes
  ``GG(nu, 0, alpha)`` with ``alpha = std(w) sqrt(Gamma(1/nu) / Gamma(3/nu))``, so the variance is
  unchanged. Default selection: the leaves with >= 2 dims (kernels and embeddings). The trainer's
  ``config.init.gg_nu`` runs it on the initial parameters.

  Example:
    >>> p = {'w': jax.random.normal(jax.random.key(0), (256, 256)) * 0.02, 'b': jnp.zeros(3)}
    >>> q = gg_reinit(p, jax.random.key(1), nu=1.0)
    >>> round(float(q['w'].std()), 3), round(fit_gg(q['w'])[0], 1), bool((q['b'] == 0).all())
    (0.02, 1.0, True)
  """
  from jaxparams import tree as jtree  # pylint: disable=import-outside-toplevel
  if not nu > 0:
    raise ValueError(f"gg_reinit needs nu > 0, got {nu}")
  flat = jtree.flatten(params)
  sel = jtree.select(flat, where if where is not None
                     else (lambda p, x: getattr(x, "ndim", 0) >= 2), flat=True)
  out = dict(flat)
  for i, p in enumerate(sorted(sel)):
    w = flat[p]
    std = float(jnp.std(w.astype(jnp.float32)))
    if std == 0:
      raise ValueError(f"gg_reinit: leaf {p!r} has zero variance (nothing to match)")
    alpha = std * math.sqrt(math.exp(math.lgamma(1 / nu) - math.lgamma(3 / nu)))
    out[p] = gg_sample(jax.random.fold_in(key, i), tuple(w.shape), nu, alpha, w.dtype)
  return jtree.unflatten(out, params)


def gg_summary(params: Any, where: Any = None, *, method: str = "moments") -> dict[str, tuple]:
  """``{path: (nu, beta)}`` for the selected leaves (default: every leaf with >= 2 dims).

  Example:
    >>> p = {'w': gg_sample(jax.random.key(2), (300, 300), nu=0.5, beta=1.0)}
    >>> {k: round(v[0], 1) for k, v in gg_summary(p).items()}
    {'w': 0.5}
  """
  from jaxparams import tree as jtree  # pylint: disable=import-outside-toplevel
  flat = jtree.flatten(params)
  sel = where if where is not None else (lambda p, x: getattr(x, "ndim", 0) >= 2)
  return {p: fit_gg(flat[p], method=method) for p in jtree.select(flat, sel, flat=True)}
