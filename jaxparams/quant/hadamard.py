"""Hadamard rotations of any size ``n = 2^k * K``: matrices and the fast Walsh-Hadamard transform.

QuaRot and SpinQuant rotate activations and weights with randomised Hadamard matrices
``R = diag(d) H_n / sqrt(n)`` (``d`` random signs), which are orthogonal and spread a few
large coordinates over all of them. ``H_n = H_{2^k} (x) H_K`` (Kronecker product): a
Sylvester butterfly on the power-of-two factor and a small dense Hadamard ``H_K`` for the
rest, as QuaRot's ``get_hadK`` does. ``H_K`` is built here (not tabulated) by Paley's
constructions: Paley I gives order ``q + 1`` for a prime ``q = 3 mod 4`` (12, 20, 24, 44,
60, 108, 140, ...), Paley II order ``2(q + 1)`` for a prime ``q = 1 mod 4`` (28, 36, 60, ...).
Sizes with no such factor (e.g. ``K = 172``, a table entry in QuaRot) fall back to a seeded
random orthogonal matrix (QR with the sign fix), still exact and orthogonal.

* :func:`hadamard_matrix`: ``H_n`` (entries +-1, ``H H^T = n I``) or None for the fallback.
* :func:`fwht`: ``x @ (H_n / sqrt(n))`` along the last axis in ``O(n log n + n K)`` (jnp: a
  reshape/add/sub butterfly per level, then one small matmul); the jnp reference is the
  specification, the dense matmul :func:`rotation_matrix` checks it.
* :func:`random_signs` / :func:`rotation_matrix`: the randomised rotation ``diag(d) H / sqrt(n)``.

A Pallas kernel was not written: at the sizes of the models here (K <= 1536) the butterfly is
a handful of fused XLA elementwise ops and the online transform costs less than the matmul it
precedes (see the report in ``benchmarks/RESULTS.md``).

Example:
  >>> import numpy as np, jax.numpy as jnp
  >>> h = hadamard_matrix(12)
  >>> bool(np.array_equal(h @ h.T, 12 * np.eye(12)))
  True
  >>> x = jnp.arange(24.0).reshape(1, 24)
  >>> bool(jnp.allclose(fwht(x), x @ rotation_matrix(24), atol=1e-4))
  True
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["hadamard_matrix", "fwht", "random_signs", "rotation_matrix", "split_pow2",
           "has_hadamard"]


def _is_prime(q: int) -> bool:
  return q >= 2 and all(q % p for p in range(2, int(q ** 0.5) + 1))


def _legendre(q: int) -> np.ndarray:
  """Quadratic character chi(a) of GF(q), q prime: 0, +1 (residue) or -1."""
  chi = -np.ones(q, np.int64)
  chi[0] = 0
  chi[(np.arange(1, q) ** 2) % q] = 1
  return chi


def _jacobsthal(q: int) -> np.ndarray:
  chi = _legendre(q)
  idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
  return chi[idx]


@functools.lru_cache(maxsize=64)
def _small(k: int) -> np.ndarray | None:
  """A Hadamard matrix of order ``k`` (not a power of two) by Paley I/II, else None."""
  if k == 1:
    return np.ones((1, 1), np.int64)
  if k == 2:
    return np.array([[1, 1], [1, -1]], np.int64)
  q = k - 1
  if _is_prime(q) and q % 4 == 3:       # Paley I: I + [[0, 1^T], [-1, Q]]
    s = np.zeros((k, k), np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return s + np.eye(k, dtype=np.int64)
  if k % 2 == 0:
    q = k // 2 - 1
    if _is_prime(q) and q % 4 == 1:     # Paley II: C (x) [[1,-1],[-1,-1]] + I (x) [[1,1],[1,-1]]
      c = np.zeros((q + 1, q + 1), np.int64)
      c[0, 1:] = 1
      c[1:, 0] = 1
      c[1:, 1:] = _jacobsthal(q)
      a = np.array([[1, -1], [-1, -1]], np.int64)
      b = np.array([[1, 1], [1, -1]], np.int64)
      return np.kron(c, a) + np.kron(np.eye(q + 1, dtype=np.int64), b)
  return None


def split_pow2(n: int) -> tuple[int, int]:
  """``(2^k, K)`` with ``n = 2^k * K`` and the largest power of two for which ``H_K`` is known
  (``K`` odd part times the power of two it still needs); ``K = 1`` when ``n`` is a power of 2.

  Example:
    >>> split_pow2(1536), split_pow2(384), split_pow2(96), split_pow2(64)
    ((128, 12), (32, 12), (8, 12), (64, 1))
  """
  if n < 1:
    raise ValueError(f"hadamard: size must be positive, got {n}")
  p = 1
  while n % (2 * p) == 0:
    p *= 2
  odd = n // p
  if odd == 1:
    return p, 1
  k = odd
  while k <= n:        # smallest K = odd * 2^j with a known Hadamard matrix
    if _small(k) is not None:
      return n // k, k
    k *= 2
  return n // odd, odd


def has_hadamard(n: int) -> bool:
  """Whether a true Hadamard matrix of order ``n`` is built here (else a random orthogonal)."""
  return _small(split_pow2(n)[1]) is not None


def _sylvester(p: int) -> np.ndarray:
  h = np.ones((1, 1), np.int64)
  while h.shape[0] < p:
    h = np.block([[h, h], [h, -h]])
  return h


def hadamard_matrix(n: int) -> np.ndarray | None:
  """The ``n x n`` Hadamard matrix ``H_{2^k} (x) H_K`` (int64, entries +-1), or None when no
  Hadamard factor ``H_K`` is known for ``n`` (then :func:`rotation_matrix` is a random
  orthogonal matrix)."""
  p, k = split_pow2(n)
  hk = _small(k)
  if hk is None:
    return None
  return np.kron(_sylvester(p), hk)


def _random_orthogonal(n: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  q, r = np.linalg.qr(rng.standard_normal((n, n)))
  return q * np.sign(np.diag(r))[None, :]


def random_signs(n: int, seed: int) -> np.ndarray:
  """``n`` random signs (+-1, float64) from ``seed`` (numpy's PCG64: reproducible anywhere)."""
  return np.where(np.random.default_rng(seed).random(n) < 0.5, -1.0, 1.0)


def rotation_matrix(n: int, signs: np.ndarray | None = None, *, seed: int = 0) -> np.ndarray:
  """The orthogonal ``diag(signs) H_n / sqrt(n)`` (float64); the dense form of :func:`fwht`.

  Without a known Hadamard factor: ``diag(signs) Q`` with ``Q`` random orthogonal from ``seed``.
  """
  h = hadamard_matrix(n)
  m = _random_orthogonal(n, seed) if h is None else h / np.sqrt(n)
  return m if signs is None else np.asarray(signs, np.float64)[:, None] * m


def _butterfly(x: jax.Array, p: int) -> jax.Array:
  """``x[..., p, K] -> H_p x`` along axis -2 (unnormalised Sylvester), log2(p) levels."""
  lead, k = x.shape[:-2], x.shape[-1]
  h = 1
  while h < p:
    y = x.reshape(*lead, p // (2 * h), 2, h, k)
    a, b = y[..., 0, :, :], y[..., 1, :, :]
    x = jnp.stack([a + b, a - b], axis=-3).reshape(*lead, p, k)
    h *= 2
  return x


def fwht(x: jax.Array, signs: jax.Array | None = None, *, seed: int = 0) -> jax.Array:
  """``x @ rotation_matrix(n, signs)`` along the last axis (``n = x.shape[-1]``), fast.

  ``(x * signs)`` reshaped ``[..., 2^k, K]``, the butterfly over the ``2^k`` axis, then ``@ H_K``
  and ``1/sqrt(n)``; computed in ``x.dtype`` (float32 keeps ~1e-6 relative error).
  """
  n = x.shape[-1]
  if signs is not None:
    x = x * jnp.asarray(signs, x.dtype)
  p, k = split_pow2(n)
  hk = _small(k)
  if hk is None:
    return x @ jnp.asarray(rotation_matrix(n, seed=seed), x.dtype)
  lead = x.shape[:-1]
  y = _butterfly(x.reshape(*lead, p, k), p)
  if k > 1:
    y = y @ jnp.asarray(hk, x.dtype)
  return (y * (1.0 / np.sqrt(n))).reshape(*lead, n).astype(x.dtype)
