"""MergeLock (Wang et al., arXiv 2509.01548): function-preserving locks against weight merging.

Random invertible reparameterisations along the model's symmetries, so the locked model
computes the same function but sits far from the shared fine-tuning basin, and weight-space
merges (task arithmetic, TIES, ...) involving it collapse:

* attention (per head): ``W_Q <- W_Q A``, ``W_K <- W_K A^-T`` (``QK^T`` unchanged) and
  ``W_V <- W_V B``, ``W_O <- B^-1 W_O``; with RoPE, ``A`` is a per-frequency-pair scaled
  rotation (it commutes with the rotary rotations; our inference, the paper's RoPE handling
  is not verified); with grouped-query attention one ``A``/``B`` per key/value head;
* ReLU MLP pairs: a random permutation and positive scaling ``d`` of the hidden units,
  ``W_1 <- W_1 diag(d) P``, ``b_1 <- b_1 diag(d) P``, ``W_2 <- P^T diag(d)^-1 W_2``.

:func:`unlock` with the returned secret restores the original weights.

Example:
  >>> import jax, jax.numpy as jnp
  >>> p = {'l0': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)}, 'l1': {'kernel': jnp.ones((4, 2))}}
  >>> locked, secret = lock_mlp(p, jax.random.key(0), pairs=[('l0', 'l1')])
  >>> x = jnp.arange(3.)
  >>> f = lambda q: jax.nn.relu(x @ q['l0']['kernel'] + q['l0']['bias']) @ q['l1']['kernel']
  >>> bool(jnp.allclose(f(locked), f(p), atol=1e-5))
  True
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

__all__ = ["lock_attention", "lock_mlp", "unlock"]

PyTree = Any
BERT_NAMES = ("query", "key", "value", "output")
LLAMA_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")


def _get(tree, path):
  for k in path.split("/"):
    if not isinstance(tree, dict) or k not in tree:
      raise ValueError(f"mergelock: no module {path!r} in the params")
    tree = tree[k]
  return tree


def _set(tree, path, value):
  keys = path.split("/")
  out = dict(tree)
  out[keys[0]] = value if len(keys) == 1 else _set(tree[keys[0]], "/".join(keys[1:]), value)
  return out


def _random_matrix(key, n, spread):
  """Well-conditioned random ``[n, n]``: orthogonal times log-uniform singular values."""
  k1, k2, k3 = jax.random.split(key, 3)
  u, _ = jnp.linalg.qr(jax.random.normal(k1, (n, n)))
  v, _ = jnp.linalg.qr(jax.random.normal(k2, (n, n)))
  s = jnp.exp(jax.random.uniform(k3, (n,), minval=-spread, maxval=spread))
  return (u * s) @ v.T


def _rope_matrix(key, n, spread):
  """Scaled rotation of each RoPE pair ``(i, i + n/2)`` (commutes with rotate_half RoPE)."""
  k1, k2 = jax.random.split(key)
  h = n // 2
  s = jnp.exp(jax.random.uniform(k1, (h,), minval=-spread, maxval=spread))
  phi = jax.random.uniform(k2, (h,), minval=-jnp.pi, maxval=jnp.pi)
  c, sn = s * jnp.cos(phi), s * jnp.sin(phi)
  # row-vector convention q' = q A: (x1, x2) -> (x1 c - x2 s, x1 s + x2 c)
  top = jnp.concatenate([jnp.diag(c), jnp.diag(sn)], 1)
  bot = jnp.concatenate([jnp.diag(-sn), jnp.diag(c)], 1)
  return jnp.concatenate([top, bot], 0)


def _apply_heads(w, mats, n_heads_per_mat, side):
  """``w[..., H*hd]`` columns (side='col') or ``w[H*hd, out]`` rows (side='row') per head."""
  hd = mats.shape[-1]
  rep = jnp.repeat(mats, n_heads_per_mat, axis=0)  # one matrix per head
  if side == "col":
    sh = w.shape
    wh = w.reshape(sh[:-1] + (rep.shape[0], hd))
    return jnp.einsum("...hd,hde->...he", wh, rep).reshape(sh)
  wh = w.reshape(rep.shape[0], hd, -1)
  return jnp.einsum("hde,heo->hdo", rep, wh).reshape(w.shape)


def _transform_attn(m, names, qa, ka, vb, ob, group):
  q, k, v, o = (dict(m[n]) for n in names)
  q["kernel"] = _apply_heads(q["kernel"], qa, group, "col")
  k["kernel"] = _apply_heads(k["kernel"], ka, 1, "col")
  v["kernel"] = _apply_heads(v["kernel"], vb, 1, "col")
  o["kernel"] = _apply_heads(o["kernel"], ob, group, "row")
  for d, mats, g in ((q, qa, group), (k, ka, 1), (v, vb, 1)):
    if "bias" in d:
      d["bias"] = _apply_heads(d["bias"], mats, g, "col")
  out = dict(m)
  out.update(zip(names, (q, k, v, o)))
  return out


def lock_attention(params: PyTree, key: jax.Array, *, modules: Sequence[str], num_heads: int,
                   num_kv_heads: int | None = None, rope: bool = False,
                   names: Sequence[str] = BERT_NAMES, spread: float = 1.0
                   ) -> tuple[PyTree, dict]:
  """Locks the attention modules at ``modules`` (e.g. ``layers_0/attn``).

  Args:
    params: the model's params; key: PRNG key.
    modules: paths of attention modules holding the four projections ``names``
      (BERT ``query/key/value/output``; Llama ``q_proj/k_proj/v_proj/o_proj``).
    num_heads: query heads; num_kv_heads: key/value heads (default ``num_heads``).
    rope: keys/queries get rotary embeddings (``A`` per-pair scaled rotations).
    spread: singular values of ``A``/``B`` are ``exp(U(-spread, spread))``.

  Returns:
    ``(locked params, secret)``; :func:`unlock` inverts.
  """
  nkv = num_kv_heads or num_heads
  if num_heads % nkv:
    raise ValueError(f"num_heads {num_heads} must be a multiple of num_kv_heads {nkv}")
  group = num_heads // nkv
  secret = {}
  out = params
  for i, path in enumerate(modules):
    m = _get(out, path)
    hd = m[names[1]]["kernel"].shape[-1] // nkv
    kq, kv = jax.random.split(jax.random.fold_in(key, i))
    ks = jax.random.split(kq, nkv)
    a = jnp.stack([(_rope_matrix if rope else _random_matrix)(k_, hd, spread) for k_ in ks])
    b = jnp.stack([_random_matrix(k_, hd, spread) for k_ in jax.random.split(kv, nkv)])
    ainv, binv = jnp.linalg.inv(a), jnp.linalg.inv(b)
    out = _set(out, path, _transform_attn(m, names, a, jnp.swapaxes(ainv, -1, -2), b, binv,
                                          group))
    secret[path] = ("attn", tuple(names), group, a, b)
  return out, secret


def lock_mlp(params: PyTree, key: jax.Array, *, pairs: Sequence[tuple[str, str]],
             spread: float = 1.0) -> tuple[PyTree, dict]:
  """Locks ReLU MLP pairs ``(first, second)`` (module paths with ``kernel``, optional ``bias``)
  by a random permutation and positive scaling of the hidden units in between."""
  secret = {}
  out = params
  for i, (p1, p2) in enumerate(pairs):
    m1, m2 = dict(_get(out, p1)), dict(_get(out, p2))
    n = m1["kernel"].shape[-1]
    if m2["kernel"].shape[0] != n:
      raise ValueError(f"mergelock: {p1!r} has {n} outputs but {p2!r} takes "
                       f"{m2['kernel'].shape[0]} inputs")
    kp, ks = jax.random.split(jax.random.fold_in(key, i))
    perm = jax.random.permutation(kp, n)
    d = jnp.exp(jax.random.uniform(ks, (n,), minval=-spread, maxval=spread))
    m1["kernel"] = (m1["kernel"] * d)[:, perm]
    if "bias" in m1:
      m1["bias"] = (m1["bias"] * d)[perm]
    m2["kernel"] = (m2["kernel"] / d[:, None])[perm]
    out = _set(_set(out, p1, m1), p2, m2)
    secret[(p1, p2)] = ("mlp", perm, d)
  return out, secret


def unlock(params: PyTree, secret: dict) -> PyTree:
  """Inverts :func:`lock_attention` / :func:`lock_mlp` given their secret."""
  out = params
  for where, spec in reversed(list(secret.items())):
    if spec[0] == "attn":
      _, names, group, a, b = spec
      ainv, binv = jnp.linalg.inv(a), jnp.linalg.inv(b)
      m = _get(out, where)
      out = _set(out, where, _transform_attn(m, names, ainv, jnp.swapaxes(a, -1, -2), binv, b,
                                             group))
    else:
      _, perm, d = spec
      p1, p2 = where
      inv = jnp.argsort(perm)
      m1, m2 = dict(_get(out, p1)), dict(_get(out, p2))
      m1["kernel"] = m1["kernel"][:, inv] / d
      if "bias" in m1:
        m1["bias"] = m1["bias"][inv] / d
      m2["kernel"] = m2["kernel"][inv] * d[:, None]
      out = _set(_set(out, p1, m1), p2, m2)
  return out
