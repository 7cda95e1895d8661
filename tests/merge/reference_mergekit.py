"""Independent numpy transcription of mergekit 0.1.5's merge math (test oracle).

Written from the mergekit sources' behaviour (``mergekit/merge_methods/*.py``,
``mergekit/sparsify.py``) in plain numpy, in float64 where mergekit is exact
and with sort-based top-k (argsort) as mergekit does -- deliberately unlike
jaxparams' threshold search and jnp code. Random methods take the uniform
numbers ``u`` (one array per model, in [0, 1)) instead of drawing them:
mergekit's ``bernoulli(p)`` is ``u < p`` here.
"""

from __future__ import annotations

import numpy as np

f64 = np.float64


# -- sparsifiers (sparsify.py) -------------------------------------------------------------------

def _l1_rescale(t, masked):
  before, after = np.abs(t).sum(), np.abs(masked).sum()
  if before < 1e-7 or after < 1e-7:
    return masked
  return masked * (before / after)


def magnitude(t, density, rescale=False):
  if density >= 1:
    return t
  if density <= 0 or t.size == 0:
    return np.zeros_like(t)
  k = max(1, int(density * t.size))
  order = np.argsort(-np.abs(t).reshape(-1), kind="stable")  # ties: lowest index first
  mask = np.zeros(t.size)
  mask[order[:k]] = 1
  masked = t * mask.reshape(t.shape)
  return _l1_rescale(t, masked) if rescale else masked


def magnitude_outliers(t, density, gamma, rescale=False):
  if density >= 1:
    return t
  n = t.size
  target, n_top = int(density * n), int(gamma * n)
  n_bot = max(0, n - target - n_top)
  # ascending magnitude; among equal magnitudes the higher index first, so the
  # kept window is consistent with "ties: lowest index ranks highest" (mergekit's
  # unstable argsort leaves the tie order unspecified).
  flat = np.abs(t).reshape(-1)
  order = np.lexsort((-np.arange(n), flat))
  mask = np.zeros(n)
  mask[order[n_bot:n_bot + target]] = 1
  masked = t * mask.reshape(t.shape)
  return _l1_rescale(t, masked) if rescale else masked


def bernoulli(t, density, u, rescale="l1"):
  if density >= 1:
    return t
  keep = u < density
  masked = t * keep
  if rescale == "inverse":
    return np.where(keep, masked / density, 0.0)
  return _l1_rescale(t, masked) if rescale else masked


def della_magprune(t, density, epsilon, u, rescale="l1"):
  if density >= 1:
    return t
  if density <= 0:
    return np.zeros_like(t)
  shape = t.shape
  x = t.reshape(1, -1) if t.ndim < 2 else t
  ranks = np.argsort(np.argsort(np.abs(x), axis=1, kind="stable"), axis=1, kind="stable") + 1.0
  mn, mx = ranks.min(axis=1, keepdims=True), ranks.max(axis=1, keepdims=True)
  rank_norm = np.clip((ranks - mn) / np.maximum(mx - mn, 1), 0, 1)
  probs = (density - epsilon) + rank_norm * 2 * epsilon
  keep = u.reshape(x.shape) < probs.astype(np.float32)
  masked = x * keep
  if rescale == "inverse":
    out = np.where(keep, masked / probs, 0.0)
  elif rescale:
    out = _l1_rescale(x, masked)
  else:
    out = masked
  return out.reshape(shape)


# -- generalized task arithmetic ----------------------------------------------------------------

def gta(base, models, weights, *, sparsify=None, consensus=False, normalize=False, rescale=False,
        lam=1.0, density=None, gamma=None, epsilon=None, u=None):
  base = base.astype(f64)
  n = len(models)
  density = density or [1.0] * n
  deltas = []
  for i, m in enumerate(models):
    d = m.astype(f64) - base
    if sparsify == "magnitude":
      d = magnitude(d, density[i], rescale)
    elif sparsify == "magnitude_outliers":
      d = magnitude_outliers(d, density[i], gamma[i], rescale)
    elif sparsify == "random":
      d = bernoulli(d, density[i], u[i], rescale)
    elif sparsify == "della":
      d = della_magprune(d, density[i], epsilon[i], u[i], rescale)
    deltas.append(d)
  w = np.asarray(weights, f64).reshape((-1,) + (1,) * base.ndim)
  D = np.stack(deltas) * w
  if consensus:
    sign = np.sign(D)
    elected = np.where(D.sum(0) >= 0, 1.0, -1.0)
    mask = sign == elected
    mixed = (D * mask).sum(0)
    div = (w * mask).sum(0)
    div[div == 0] = 1
  else:
    mixed = D.sum(0)
    div = w.sum(0)
    div = np.where(np.abs(div) < 1e-8, 1.0, div)
  if normalize:
    mixed = mixed / div
  return base + lam * mixed


# -- other methods --------------------------------------------------------------------------------

def linear(models, weights, normalize=True):
  acc = sum(w * m.astype(f64) for w, m in zip(weights, models))
  return acc / sum(weights) if normalize else acc


def _slerp_vec(t, a, b, threshold):
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  na = na if na > 1e-8 else 1.0
  nb = nb if nb > 1e-8 else 1.0
  dot = float(np.clip(np.dot(a / na, b / nb), -1, 1))
  if abs(dot) > threshold:
    return (1 - t) * a + t * b
  th = np.arccos(dot)
  return (np.sin((1 - t) * th) * a + np.sin(t * th) * b) / np.sin(th)


def slerp(t, base, other):
  return _slerp_vec(t, base.astype(f64).ravel(), other.astype(f64).ravel(), 0.9995).reshape(
      base.shape)


def _nuslerp_rows(t, v0, v1):
  out = np.empty_like(v0)
  for idx in np.ndindex(v0.shape[:-1]):
    a, b = v0[idx], v1[idx]
    ua = a / max(np.linalg.norm(a), 1e-7)
    ub = b / max(np.linalg.norm(b), 1e-7)
    c = float(np.clip(np.dot(ua, ub), -1, 1))
    if 1 - c * c <= 1e-16:
      out[idx] = (1 - t) * a + t * b
    else:
      th = np.arccos(c)
      out[idx] = (np.sin((1 - t) * th) * a + np.sin(t * th) * b) / np.sin(th)
  return out


def nuslerp(base, m0, m1, weights, flatten=True, row_wise=False):
  total = weights[0] + weights[1]
  t = 0.5 if abs(total) < 1e-6 else weights[1] / total
  v0, v1 = m0.astype(f64), m1.astype(f64)
  if base is not None:
    v0, v1 = v0 - base, v1 - base
  if flatten:
    r = _nuslerp_rows(t, v0.reshape(1, -1), v1.reshape(1, -1)).reshape(v0.shape)
  elif row_wise:
    r = _nuslerp_rows(t, v0.T, v1.T).T
  else:
    r = _nuslerp_rows(t, v0, v1)
  return r if base is None else base + r


def multislerp(base, models, weights, normalize_weights=True, eps=1e-8):
  if len(models) == 1:
    return models[0].astype(f64)
  x = np.stack([m.astype(f64) for m in models])
  if base is not None:
    x = x - base
  flat = x.reshape(len(models), -1)
  w = np.asarray(weights, f64)
  if normalize_weights:
    w = w / w.sum()
  norms = np.linalg.norm(flat, axis=1, keepdims=True)
  units = flat / (norms + eps)
  mean = (units * w[:, None]).sum(0)
  mean = mean / np.linalg.norm(mean)
  tangent = ((units - (units @ mean)[:, None] * mean) * w[:, None]).sum(0)
  tn = np.linalg.norm(tangent) + eps
  res = (mean * np.cos(tn) + tangent * np.sin(tn) / tn) * (norms[:, 0] * w).sum()
  res = res.reshape(x.shape[1:])
  return res if base is None else res + base


def karcher(models, max_iter=10, tol=1e-5):
  if len(models) == 1:
    return models[0].astype(f64)
  xs = [m.astype(f64).ravel() for m in models]
  norms = [np.linalg.norm(x) for x in xs]
  units = [x / n if n > 0 else np.zeros_like(x) for x, n in zip(xs, norms)]
  valid = [i for i, n in enumerate(norms) if n > tol]
  if not valid:
    return np.zeros_like(models[0], dtype=f64)
  alphas = [1.0 / len(valid)] * len(valid)
  vu = [units[i] for i in valid]
  mean = sum(a * u for a, u in zip(alphas, vu))
  mn = np.linalg.norm(mean)
  mean = vu[0].copy() if mn < tol else mean / mn
  for _ in range(max_iter):
    tangent = np.zeros_like(mean)
    for a, u in zip(alphas, vu):
      dot = np.clip(mean @ u, -1, 1)
      th = np.arccos(dot)
      if th < tol:
        continue
      tangent += a * (th / np.sin(th)) * (u - dot * mean)
    tn = np.linalg.norm(tangent)
    if tn < tol:
      break
    mean = np.cos(tn) * mean + np.sin(tn) * tangent / tn
    un = np.linalg.norm(mean)
    if un > tol:
      mean = mean / un
  return (sum(norms) / len(models) * mean).reshape(models[0].shape)


def model_stock(base, models, filter_wise=False):
  shape = base.shape
  w0 = base.astype(f64)
  ws = [m.astype(f64) for m in models]
  if filter_wise:
    if w0.ndim == 1:
      w0, ws = w0[None], [w[None] for w in ws]
  else:
    w0, ws = w0.ravel(), [w.ravel() for w in ws]
  offs = [w - w0 for w in ws]
  cos = []
  for i in range(len(offs)):
    for j in range(i + 1, len(offs)):
      a, b = offs[i], offs[j]
      prod = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
      cos.append(np.clip((a * b).sum(-1) / np.maximum(prod, 1e-6), -1, 1))
  c = np.mean(cos, axis=0)[..., None]
  k = len(ws)
  den = 1 + (k - 1) * c
  t = np.where(np.abs(den) < 1e-6, 0.0, k * c / np.where(np.abs(den) < 1e-6, 1, den))
  return (t * (sum(ws) / k) + (1 - t) * w0).reshape(shape)


def nearswap(base, other, t):
  a, b = base.astype(f64), other.astype(f64)
  w = np.clip(t / np.maximum(np.abs(a - b), 1e-6), 0, 1)
  return w * b + (1 - w) * a


def sce(base, models, select_topk=1.0):
  tv = np.stack([m.astype(f64) - base for m in models])
  if select_topk < 1:
    var = tv.var(axis=0)
    k = int(np.count_nonzero(var) * np.float32(select_topk))
    mask = np.zeros(var.size)
    if k > 0 and select_topk > 0:
      mask[np.argsort(-var.ravel(), kind="stable")[:k]] = 1
    tv = tv * mask.reshape(var.shape)
  elected = np.where(tv.sum(0) >= 0, 1.0, -1.0)
  erase = np.sign(tv) == elected
  w = (tv ** 2).reshape(len(models), -1).mean(1)
  w = np.full_like(w, 1 / len(w)) if abs(w.sum()) < 1e-6 else w / w.sum()
  ew = w.reshape((-1,) + (1,) * base.ndim) * erase
  return base + (tv * ew).sum(0) / np.maximum(ew.sum(0), 1e-6)


def ram(base, models, epsilon=1e-5, r=None, alpha=None):
  tv = np.stack([m.astype(f64).ravel() - base.ravel() for m in models])
  nz = np.abs(tv) > epsilon
  counts = nz.sum(0)
  unique, overlap = counts == 1, counts > 1
  scale = np.ones(len(models))
  if r is not None:
    shared_c = (nz & overlap).sum(1)
    unique_c = (nz & unique).sum(1)
    scale = 1 + r * np.clip(shared_c / np.maximum(unique_c, epsilon), 0, alpha)
  z = tv * nz
  merged = (z * unique * scale[:, None] + z * overlap / np.maximum(counts, 1)).sum(0)
  return base + merged.reshape(base.shape)


def arcee_fusion(base, other):
  # float32 like mergekit: the importance threshold is a hard decision.
  b, m = base.astype(np.float32), other.astype(np.float32)

  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  p, q = softmax(m) + 1e-8, softmax(b) + 1e-8
  imp = np.abs(m - b) * (p * np.log(p / q)).sum(-1, keepdims=True)
  s = np.sort(imp.ravel())
  qs = [s[int(np.float32(qq) * np.float32(s.size - 1))] for qq in (0.25, 0.5, 0.75)]
  thr = qs[1] + 1.5 * (qs[2] - qs[0])
  return b + (m - b) * (imp >= thr)
