"""Zeroth-order fine-tuning: MeZO's SPSA with seed-regenerated perturbations (pure functions).

One MeZO step (Malladi et al., 2023) on parameters ``θ`` and a loss ``L``:

* for ``k = 1..n`` (n-SPSA): ``z_k ~ N(0, I)`` from the key ``fold_in(key, k)`` (each leaf from
  ``fold_in(key_k, leaf_index)``, so ``z`` is a pure function of ``(key, k, leaf)`` and is
  **never stored**, only regenerated), ``g_k = (L(θ + εz_k) - L(θ - εz_k)) / 2ε``;
* ``θ ← θ - lr · (mean_k g_k z_k + wd · θ)`` (weight decay on matrices only, MeZO skips biases
  and norms).

``θ`` itself is never modified by the perturbations: ``θ ± εz`` is a temporary, per leaf, that
feeds the forward pass, so "restore" is exact by construction. (MeZO's in-place
``+εz, -2εz, +εz`` cannot be: float addition is not invertible, ~45% of fp32 elements differ
after one round trip at ε = 1e-3; :func:`inplace_round_trip` shows it.) Under ``jit`` the update
reuses the donated parameter buffers; no gradient, optimizer state or stored activations exist, so
memory is that of inference plus the perturbed temporaries. :mod:`.zo2` streams the same step
block by block from host memory (ZO2).

Example:
  >>> import jax, jax.numpy as jnp
  >>> params = {'w': jnp.array([1.0, -2.0])}
  >>> loss = lambda p: 0.5 * jnp.sum(p['w'] ** 2)
  >>> g = spsa_gradient(loss, params, jax.random.key(0), eps=1e-3, n_samples=2000)
  >>> bool(jnp.allclose(g['w'], params['w'], atol=0.3))   # E[g z] = grad = w
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["ZOConfig", "perturbation", "perturb", "projected_gradients", "spsa_gradient",
           "apply_update", "mezo_step", "inplace_round_trip", "decay_mask"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ZOConfig:
  """MeZO hyperparameters.

  Attributes:
    eps: Perturbation scale ε (MeZO default 1e-3).
    n_samples: Number of SPSA directions per step (n-SPSA); their ``g_k z_k`` are averaged.
    weight_decay: Decoupled weight decay on matrices (``ndim >= 2``) only.
  """
  eps: float = 1e-3
  n_samples: int = 1
  weight_decay: float = 0.0

  def __post_init__(self):
    if not self.eps > 0:
      raise ValueError(f"ZOConfig.eps must be > 0, found {self.eps}")
    if int(self.n_samples) < 1:
      raise ValueError(f"ZOConfig.n_samples must be >= 1, found {self.n_samples}")


def perturbation(params: Any, key: jax.Array, offset: int | jax.Array = 0) -> Any:
  """The direction ``z`` (a tree like ``params``): leaf ``i`` is ``N(0, 1)`` from ``fold_in(key, i)``.

  Drawn in float32 and cast to the leaf's dtype. Regenerating it from the same key gives the
  same bits, so it never needs storing. ``offset`` (may be traced) numbers the leaves of a
  sub-tree as in the full tree (the block-streaming driver perturbs one block at a time).
  """
  leaves, treedef = jax.tree.flatten(params)
  zs = [jax.random.normal(jax.random.fold_in(key, offset + i), jnp.shape(x), jnp.float32).astype(
      jnp.result_type(x)) for i, x in enumerate(leaves)]
  return jax.tree.unflatten(treedef, zs)


def perturb(params: Any, key: jax.Array, scale: float | jax.Array,
            offset: int | jax.Array = 0) -> Any:
  """``θ + scale · z(key)`` computed in float32 per leaf (a temporary; ``params`` is untouched)."""
  z = perturbation(params, key, offset)
  return jax.tree.map(
      lambda p, zz: (p.astype(jnp.float32) + scale * zz.astype(jnp.float32)).astype(p.dtype),
      params, z)


def projected_gradients(loss_fn: Callable[..., jax.Array], params: Any, key: jax.Array, *args,
                        eps: float, n_samples: int) -> tuple[jax.Array, jax.Array]:
  """The n-SPSA scalars ``g_k = (L(θ+εz_k) - L(θ-εz_k)) / 2ε`` and the mean of ``L(θ±εz_k)``.

  ``loss_fn(params, *args)`` returns a scalar. A ``lax.scan`` over ``k``, so the compiled
  program holds one pair of forward passes whatever ``n_samples`` is.
  """
  def body(carry, k):
    key_k = jax.random.fold_in(key, k)
    lp = loss_fn(perturb(params, key_k, eps), *args).astype(jnp.float32)
    lm = loss_fn(perturb(params, key_k, -eps), *args).astype(jnp.float32)
    return carry, ((lp - lm) / (2.0 * eps), 0.5 * (lp + lm))

  _, (g, losses) = jax.lax.scan(body, None, jnp.arange(int(n_samples)))
  return g, jnp.mean(losses)


def decay_mask(params: Any) -> Any:
  """True for matrices (``ndim >= 2``): MeZO decays no biases and no norm scales."""
  return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def apply_update(params: Any, key: jax.Array, g: jax.Array, lr: float | jax.Array, *,
                 weight_decay: float = 0.0, offset: int | jax.Array = 0) -> Any:
  """``θ ← θ - lr · (mean_k g_k z_k + wd · θ)`` with each ``z_k`` regenerated from ``key``.

  For up to 8 directions (the usual n-SPSA), per leaf the directions are regenerated and summed
  inside one elementwise expression, so XLA fuses random generation and update: no ``z`` and no
  accumulator the size of the parameters is materialised. More directions go through a
  ``lax.scan`` with an accumulator (compile time independent of ``n``).
  """
  n = g.shape[0]
  leaves, treedef = jax.tree.flatten(params)

  def z(k, i, p):
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, k), offset + i),
                             jnp.shape(p), jnp.float32).astype(jnp.result_type(p)).astype(
                                 jnp.float32)

  if n <= 8:
    directions = [sum(g[k] * z(k, i, p) for k in range(n)) for i, p in enumerate(leaves)]
  else:
    def body(acc, k):
      return [a + g[k] * z(k, i, p) for i, (a, p) in enumerate(zip(acc, leaves))], None
    zero = [jnp.zeros(jnp.shape(p), jnp.float32) for p in leaves]
    directions = jax.lax.scan(body, zero, jnp.arange(n))[0]
  out = []
  for p, d in zip(leaves, directions):
    p32 = p.astype(jnp.float32)
    decay = weight_decay * p32 if jnp.ndim(p) >= 2 else 0.0
    out.append((p32 - lr * (d / n + decay)).astype(p.dtype))
  return jax.tree.unflatten(treedef, out)


def spsa_gradient(loss_fn: Callable[..., jax.Array], params: Any, key: jax.Array, *args,
                  eps: float = 1e-3, n_samples: int = 1) -> Any:
  """The n-SPSA gradient estimate ``mean_k g_k z_k`` as a tree (for tests and analysis).

  Its expectation over keys is the gradient (to ``O(ε²)``): ``E[z zᵀ] ∇L = ∇L``.
  """
  g, _ = projected_gradients(loss_fn, params, key, *args, eps=eps, n_samples=n_samples)
  # lr = -1 turns the update into θ + mean g z; subtract θ to keep only the estimate.
  moved = apply_update(jax.tree.map(jnp.zeros_like, params), key, g, -1.0)
  return moved


def mezo_step(loss_fn: Callable[..., jax.Array], params: Any, key: jax.Array, *args,
              lr: float | jax.Array, config: ZOConfig = ZOConfig()) -> tuple[Any, dict]:
  """One MeZO update; returns ``(new_params, {'loss', 'projected_grad'})``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> p = {'w': jnp.ones(3)}
    >>> loss = lambda p: jnp.sum(p['w'] ** 2)
    >>> step = jax.jit(lambda p, s: mezo_step(loss, p, jax.random.key(s), lr=0.05)[0])
    >>> for s in range(200):
    ...   p = step(p, s)
    >>> float(loss(p)) < 0.1
    True
  """
  g, loss = projected_gradients(loss_fn, params, key, *args, eps=config.eps,
                                n_samples=config.n_samples)
  new = apply_update(params, key, g, lr, weight_decay=config.weight_decay)
  return new, {"loss": loss, "projected_grad": jnp.sqrt(jnp.mean(g ** 2))}


def inplace_round_trip(params: Any, key: jax.Array, eps: float) -> Any:
  """MeZO's in-place ``θ + εz - 2εz + εz`` (what PyTorch MeZO does); NOT bit-exact in float.

  Kept to document (and test) why :func:`perturb` never touches ``θ``.
  """
  z = perturbation(params, key)
  step = lambda t, s: jax.tree.map(lambda p, zz: p + s * eps * zz, t, z)
  return step(step(step(params, 1.0), -2.0), 1.0)
