"""Reshaping weights toward a generalized-Gaussian profile for compressibility.

* :func:`deepshape` -- the reference's post-training histogram specification
  (``GGD_deepshape(shape_scale=0.8, std_scale=0.6, adj_minnum=1000)``): quantise to a ``2^-13``
  grid; the core is ``|x| <= p_max``, ``p_max`` the smallest positive grid value whose count is
  ``<= adj_minnum``; fit ``(nu, beta)`` on the core; the target is ``GG(shape_scale * nu,
  std_scale * beta)``; the sorted core values are reassigned, in rank order, to the grid bins of
  ``[-p_max, p_max]`` with counts proportional to the target density. Values outside the core are
  kept. The rank order of the weights is preserved.
* :func:`backslash` -- BackSlash's rate-constrained step as an optax transform (the training-time
  penalty): after the wrapped update, ``theta -= (lam * nu / n) sign(theta) (|theta| + 1)^(nu - 1)``
  with ``nu`` the current GG shape of all selected weights and ``n`` their count.
* :func:`deepshape_penalty` -- DeepShape as a fine-tuning penalty (an optax transform, jittable,
  usable in the trainer's step): each selected leaf is pulled toward the same target profile
  ``GG(shape_scale * nu, std_scale * beta)`` (``(nu, beta)`` fitted per leaf at ``init``, by the
  reference's moment matching) by adding ``lam * grad R`` to the updates, with
  ``R(theta) = beta_t^2 / nu_t * sum (|theta| / beta_t)^nu_t`` -- the target's negative
  log-density, scaled so that a Gaussian target (``nu_t = 2``) is weight decay ``lam/2 |theta|^2``.
  The gradient ``lam * beta_t * sign(theta) * (|theta| / beta_t)^(nu_t - 1)`` takes
  ``|theta| >= eps * beta_t`` so that ``nu_t < 1`` stays finite at 0.
* :func:`code_entropy` -- compressibility: Shannon entropy (bits per weight) of the weights'
  8-bit codes (per-tensor symmetric uniform quantisation), i.e. their entropy-coded size.

Example:
  >>> import jax
  >>> from jaxparams.prune.gg import gg_sample
  >>> w = gg_sample(jax.random.key(0), (50_000,), nu=2.0, beta=0.02)
  >>> ws = deepshape(w, adj_minnum=20)
  >>> bool(code_entropy(ws) < code_entropy(w))
  True
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxparams import tree as jtree
from jaxparams.prune.gg import fit_gg, gg_ratio

__all__ = ["backslash", "code_entropy", "deepshape", "deepshape_penalty", "gg_fit_jnp",
           "penalty_value"]


def code_entropy(w: Any, bits: int = 8) -> float:
  """Entropy in bits per weight of ``w``'s symmetric uniform ``bits``-bit codes.

  Example:
    >>> code_entropy(np.array([0.0, 0.0, 1.0, -1.0]))
    1.5
  """
  x = np.asarray(w, np.float64).ravel()
  amax = np.max(np.abs(x)) if x.size else 0.0
  if amax == 0:
    return 0.0
  q = np.round(x / amax * (2 ** (bits - 1) - 1)).astype(np.int64)
  _, counts = np.unique(q, return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log2(p)).sum())


def deepshape(w: Any, *, shape_scale: float = 0.8, std_scale: float = 0.6,
              grid: float = 2.0 ** -13, adj_minnum: int = 1000) -> jax.Array:
  """Histogram specification of one tensor toward ``GG(shape_scale*nu, std_scale*beta)``.

  Args:
    w: the weights (any shape).
    shape_scale, std_scale: the target's shape and scale relative to the core's fit.
    grid: quantisation step (the reference's ``2^-13``).
    adj_minnum: a grid value with at most this many entries ends the core.

  Returns:
    The reshaped weights (same shape and dtype).
  """
  x = np.asarray(w, np.float64)
  dtype = getattr(w, "dtype", np.float32)
  flat = np.round(x.ravel() / grid).astype(np.int64)          # grid units
  mags, counts = np.unique(np.abs(flat[flat != 0]), return_counts=True)
  small = mags[counts <= adj_minnum]
  if small.size == 0:
    raise ValueError(f"deepshape: no grid value has <= {adj_minnum} entries; lower adj_minnum")
  p_max = int(small.min())
  core = np.abs(flat) <= p_max
  if core.sum() < 2:
    raise ValueError("deepshape: the core holds fewer than 2 values")
  vals = flat[core] * grid
  mu = float(vals.mean())
  nu, beta = fit_gg(vals - mu)
  nu_t, beta_t = shape_scale * nu, std_scale * beta
  bins = np.arange(-p_max, p_max + 1) * grid
  dens = np.exp(-(np.abs(bins - mu) / beta_t) ** nu_t)
  target = np.floor(dens / dens.sum() * core.sum()).astype(np.int64)
  short = int(core.sum() - target.sum())                       # hand out the remainder
  if short > 0:
    target[np.argsort(-dens, kind="stable")[:short]] += 1
  order = np.argsort(flat[core], kind="stable")
  new_core = np.repeat(bins, target)
  out = x.ravel().copy()
  idx = np.flatnonzero(core)
  out[idx[order]] = new_core
  return jnp.asarray(out.reshape(x.shape), dtype)


def backslash(lam: float = 2e3, where: Any = None) -> optax.GradientTransformation:
  """BackSlash's shrink step, chained after an optimizer: ``optax.chain(adam, backslash())``.

  Needs ``params`` in ``update``. ``nu`` is re-estimated (moment matching, pooled over the
  selected leaves) at every step, on the host.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = backslash(lam=0.2)
    >>> p = {'w': jnp.array([[0.5, -0.25], [1.0, -2.0]])}
    >>> u, _ = tx.update({'w': jnp.zeros((2, 2))}, tx.init(p), p)
    >>> bool(jnp.all(jnp.abs(p['w'] + u['w']) < jnp.abs(p['w'])))
    True
  """
  if lam < 0:
    raise ValueError(f"backslash: lam must be >= 0, got {lam}")

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("backslash needs params in update()")
    pf, uf = jtree.flatten(params), jtree.flatten(updates)
    sel = jtree.select(pf, where if where is not None else (lambda p, x: x.ndim >= 2), flat=True)
    new = {k: pf[k] + uf[k] for k in sel}
    pooled = np.concatenate([np.asarray(v).ravel() for v in new.values()])
    nu, _ = fit_gg(pooled)
    n = pooled.size
    out = dict(uf)
    for k in sel:
      t = new[k]
      out[k] = uf[k] - (lam * nu / n) * jnp.sign(t) * (jnp.abs(t) + 1.0) ** (nu - 1.0)
    return jtree.unflatten(out, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


_NU_TABLE = np.round(np.arange(0.1, 3.0 + 1e-9, 0.01), 2)   # the reference's table (tree.summary)


def gg_fit_jnp(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Moment-matching ``(nu, beta)`` of :func:`~jaxparams.prune.fit_gg` in jnp (traceable).

  Example:
    >>> from jaxparams.prune.gg import gg_sample
    >>> nu, beta = gg_fit_jnp(gg_sample(jax.random.key(0), (100_000,), nu=1.0, beta=0.5))
    >>> round(float(nu), 1), round(float(beta), 2)
    (1.0, 0.5)
  """
  x = jnp.asarray(x, jnp.float32).ravel()
  s2, s1 = jnp.sum(x * x), jnp.sum(jnp.abs(x))
  rho = x.size * s2 / (s1 * s1)
  table = jnp.asarray(_NU_TABLE, jnp.float32)
  nu = table[jnp.argmin(jnp.abs(gg_ratio(table) - rho))]
  sigma = jnp.sqrt(s2 / x.size)
  beta = sigma * jnp.exp(0.5 * (jax.scipy.special.gammaln(1 / nu) -
                                jax.scipy.special.gammaln(3 / nu)))
  return nu, beta


def deepshape_penalty(lam: float, *, shape_scale: float = 0.8, std_scale: float = 0.6,
                      eps: float = 1e-2, where: Any = None) -> optax.GradientTransformation:
  """DeepShape's target profile as a penalty gradient added to the updates (see the module doc).

  Chain it before an optimizer for a loss term (``optax.chain(deepshape_penalty(lam), adam)``),
  or after ``scale_by_adam`` for a decoupled penalty (as AdamW's weight decay). The targets
  ``(nu_t, beta_t)`` are fitted on the params given to ``init`` and kept in the state. Default
  selection: leaves with >= 2 dims.

  Example:
    >>> import jax.numpy as jnp
    >>> p = {'w': jnp.array([[0.5, -0.25], [1.0, -2.0]]), 'b': jnp.ones(2)}
    >>> tx = deepshape_penalty(0.1, shape_scale=1.0, std_scale=1.0)
    >>> u, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    >>> bool(jnp.all(jnp.sign(u['w']) == jnp.sign(p['w']))), u['b'].tolist()
    (True, [0.0, 0.0])
  """
  if lam < 0 or shape_scale <= 0 or std_scale <= 0 or eps <= 0:
    raise ValueError(f"deepshape_penalty needs lam >= 0 and positive shape_scale, std_scale, "
                     f"eps; got lam={lam}, shape_scale={shape_scale}, std_scale={std_scale}, "
                     f"eps={eps}")
  sel_fn = where if where is not None else (lambda p, x: getattr(x, "ndim", 0) >= 2)

  def selected(params):
    flat = jtree.flatten(params)
    return flat, sorted(jtree.select(flat, sel_fn, flat=True))

  def init_fn(params):
    flat, sel = selected(params)
    targets = {}
    for k in sel:
      nu, beta = gg_fit_jnp(flat[k])
      targets[k] = jnp.stack([shape_scale * nu, std_scale * beta])
    return targets

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("deepshape_penalty needs params in update()")
    flat, sel = selected(params)
    uf = jtree.flatten(updates)
    for k in sel:
      nu_t, beta_t = state[k][0], state[k][1]
      t = flat[k].astype(jnp.float32)
      r = jnp.maximum(jnp.abs(t) / beta_t, eps)
      g = lam * beta_t * jnp.sign(t) * r ** (nu_t - 1.0)
      uf[k] = (uf[k] + g).astype(uf[k].dtype)
    return jtree.unflatten(uf, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def penalty_value(params: Any, state: Any, lam: float) -> jax.Array:
  """``lam * R(params)`` of :func:`deepshape_penalty`'s state (for logging and checks)."""
  flat = jtree.flatten(params)
  total = jnp.float32(0.0)
  for k, tgt in state.items():
    nu_t, beta_t = tgt[0], tgt[1]
    total += beta_t ** 2 / nu_t * jnp.sum((jnp.abs(flat[k].astype(jnp.float32)) / beta_t) ** nu_t)
  return lam * total
