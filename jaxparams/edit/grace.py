"""GRACE: a discrete key-value codebook at one layer, injected through ``dot=`` (lifelong edits).

The edited kernel leaf becomes a :class:`GraceKernel` (the original matrix plus keys, values,
radii, an ``active`` flag and the edit id of each entry). Run the model with
``Llama(config, dot=grace.dot)``: for every token, if the layer input's nearest active key is
within that key's radius the layer's output is replaced by the key's value, else the plain
matmul runs (``jnp.where``, no Python branch; EasyEdit's ``replace_all``-style per-token match).

An edit (``EasyEdit/easyeditor/models/grace/GRACE.py``): the key is the layer input at the
prompt's last token; the value is trained (``n_iter`` Adam steps, ``edit_lr``) so the replaced
output yields the target; codebook rules with ``d`` the distance to the nearest key:
``d > eps_init + eps_nearest`` -> add an entry; labels differ -> add and split the radii
(``eps_nearest = d/2 - 1e-5``, ``eps_new = d/2``); same label -> grow the nearest radius to
``d`` when ``d`` is beyond it (``coverage``; a radius is never shrunk there, as the reference).
:func:`rollback` deactivates the entries of one edit id.

Example:
  >>> import jax.numpy as jnp
  >>> k = GraceKernel.wrap(jnp.eye(2), capacity=2)
  >>> k = k.add(jnp.array([1., 0.]), jnp.array([5., 5.]), 0.5, edit_id=0)
  >>> dot(jnp.array([[1., 0.], [0., 1.]]), k).tolist()
  [[5.0, 5.0], [0.0, 1.0]]
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxparams import tree as jtree
from jaxparams.edit import methods, probe
from jaxparams.edit import requests as req_lib
from jaxparams.edit import targets as tgt_lib

__all__ = ["GraceKernel", "GraceParams", "dot", "grace_edit", "rollback", "wrap_params",
           "update_codebook"]


@dataclasses.dataclass(frozen=True)
class GraceKernel:
  """A kernel with a codebook. Arrays: ``w [d_k, d_v]``, ``keys [N, d_k]``, ``values [N, d_v]``,
  ``eps [N]``, ``active [N]``, ``edit_id [N]``, ``labels [N]`` (int code of each entry's target,
  an array so that edits never trigger recompiles)."""
  w: jax.Array
  keys: jax.Array
  values: jax.Array
  eps: jax.Array
  active: jax.Array
  edit_id: jax.Array
  labels: jax.Array

  @classmethod
  def wrap(cls, w: jax.Array, capacity: int = 16) -> "GraceKernel":
    d_k, d_v = w.shape
    return cls(w, jnp.zeros((capacity, d_k), jnp.float32), jnp.zeros((capacity, d_v), jnp.float32),
               jnp.zeros((capacity,), jnp.float32), jnp.zeros((capacity,), bool),
               jnp.full((capacity,), -1, jnp.int32), jnp.full((capacity,), -1, jnp.int32))

  @property
  def n(self) -> int:
    return int(jnp.sum(self.active))

  def _grow(self) -> "GraceKernel":
    c = self.keys.shape[0]
    pad = lambda a, v: jnp.concatenate([a, jnp.full((c,) + a.shape[1:], v, a.dtype)])
    return GraceKernel(self.w, pad(self.keys, 0), pad(self.values, 0), pad(self.eps, 0),
                       pad(self.active, False), pad(self.edit_id, -1), pad(self.labels, -1))

  def add(self, key: jax.Array, value: jax.Array, eps: float | jax.Array, *, edit_id: int,
          label: int = 0) -> "GraceKernel":
    """Appends one entry (growing the capacity when full)."""
    k = self
    used = int(jnp.max(jnp.where(k.edit_id >= 0, jnp.arange(k.keys.shape[0]), -1))) + 1
    if used >= k.keys.shape[0]:
      k = k._grow()
    return GraceKernel(k.w, k.keys.at[used].set(key), k.values.at[used].set(value),
                       k.eps.at[used].set(eps), k.active.at[used].set(True),
                       k.edit_id.at[used].set(edit_id), k.labels.at[used].set(label))


jax.tree_util.register_pytree_node(
    GraceKernel, lambda g: ((g.w, g.keys, g.values, g.eps, g.active, g.edit_id, g.labels), None),
    lambda _, ch: GraceKernel(*ch))


def dot(x: jax.Array, kernel: Any) -> jax.Array:
  """The ``dot=`` injection: codebook lookup for :class:`GraceKernel` leaves, matmul otherwise."""
  if not isinstance(kernel, GraceKernel):
    return jnp.matmul(x, kernel.astype(x.dtype))
  y = jnp.matmul(x, kernel.w.astype(x.dtype))
  d = jnp.linalg.norm(x.astype(jnp.float32)[..., None, :] - kernel.keys, axis=-1)
  d = jnp.where(kernel.active, d, jnp.inf)
  j = jnp.argmin(d, axis=-1)
  hit = jnp.min(d, axis=-1) <= kernel.eps[j]
  return jnp.where(hit[..., None], kernel.values[j].astype(y.dtype), y)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GraceParams:
  """GRACE hyperparameters (EasyEdit ``hparams/GRACE/*.yaml``: ``n_iter``, ``edit_lr``,
  ``eps_expand='coverage'``) and the initial radius of a new entry.

  ``eps_mode='relative'`` (default): the radius is ``eps`` times the new key's norm, so it
  follows the layer's scale (on the facts LMs a paraphrase's key lies 0.1-0.27 ||k|| from its
  edit's key, another subject's at least 0.44 ||k|| at layers 1-3). ``'absolute'``: ``eps`` is the
  radius itself, the reference's ``init_radius`` (1.0 for its 4096-wide keys).
  """
  eps: float = 0.3
  eps_mode: str = "relative"
  n_iter: int = 50
  edit_lr: float = 1.0

  def __post_init__(self):
    if self.eps_mode not in ("relative", "absolute"):
      raise ValueError(f"GraceParams.eps_mode={self.eps_mode!r}; valid: 'relative', 'absolute'")
    if not self.eps > 0:
      raise ValueError(f"GraceParams.eps={self.eps!r}: a radius must be > 0")

  def radius(self, key: jax.Array) -> float:
    """The initial radius of a new entry at ``key``."""
    if self.eps_mode == "absolute":
      return float(self.eps)
    return float(self.eps * jnp.linalg.norm(key.astype(jnp.float32)))


def wrap_params(params: Any, layer: int, capacity: int = 16) -> Any:
  """Replaces layer ``layer``'s MLP output kernel by an empty :class:`GraceKernel`."""
  flat = jtree.flatten(params)
  path = probe.kernel_path(layer)
  if path not in flat:
    raise ValueError(f"params have no leaf {path!r}")
  flat[path] = GraceKernel.wrap(flat[path], capacity)
  return jtree.unflatten(flat)




def update_codebook(g: GraceKernel, key: jax.Array, value: jax.Array, *, label: int,
                    edit_id: int, eps_init: float) -> GraceKernel:
  """GRACE's codebook rules for one (key, value) of class ``label`` (``GRACE.py``): add an
  entry when the nearest key is beyond both radii, split the two radii on a label conflict,
  grow the nearest radius to the distance when the same label lies outside it (never shrunk).

  Example:
    >>> import jax.numpy as jnp
    >>> g = GraceKernel.wrap(jnp.eye(2), capacity=2)
    >>> g = update_codebook(g, jnp.array([0., 0.]), jnp.ones(2), label=1, edit_id=0, eps_init=3.)
    >>> g = update_codebook(g, jnp.array([1., 0.]), jnp.ones(2), label=1, edit_id=1, eps_init=3.)
    >>> float(g.eps[0]), g.n   # inside the radius: unchanged (not set to the distance 1)
    (3.0, 1)
  """
  d = jnp.linalg.norm(g.keys - key, axis=-1)
  d = jnp.where(g.active, d, jnp.inf)
  j = int(jnp.argmin(d))
  dist = float(d[j])
  if not g.n or dist > eps_init + float(g.eps[j]):
    return g.add(key, value, eps_init, edit_id=edit_id, label=label)
  if int(g.labels[j]) != label:
    g = GraceKernel(g.w, g.keys, g.values, g.eps.at[j].set(dist / 2 - 1e-5), g.active,
                    g.edit_id, g.labels)
    return g.add(key, value, dist / 2, edit_id=edit_id, label=label)
  if dist > float(g.eps[j]):  # same label, query outside: grow the radius to cover it
    return GraceKernel(g.w, g.keys, g.values, g.eps.at[j].set(dist), g.active, g.edit_id,
                       g.labels)
  return g


def grace_edit(module: Any, params: Any, tokenizer: Any, request: req_lib.EditRequest, *,
               layer: int, edit_id: int, hp: GraceParams = GraceParams()) -> Any:
  """One GRACE edit on params whose layer ``layer`` kernel is a :class:`GraceKernel` (see
  :func:`wrap_params`); ``module`` must run with ``dot=grace.dot``. Returns the new params."""
  request.check(tokenizer)
  g = probe.get_kernel(params, layer)
  if not isinstance(g, GraceKernel):
    raise ValueError(f"layer {layer} kernel is not a GraceKernel: call grace.wrap_params first")
  key = methods.compute_keys(module, params, tokenizer, [request], layer, [["{}"]], "last")[0]
  thp = tgt_lib.TargetParams(v_lr=hp.edit_lr, v_num_grad_steps=hp.n_iter + 1, kl_factor=0.0,
                             v_weight_decay=0.0, clamp_norm_factor=1e6, kl_prompts=(),
                             fact_token="last")
  batch = tgt_lib.encode_batch(tokenizer, [request], ["{}"], (), "last")
  value = tgt_lib.optimize_targets(module, params, batch, layer=layer, site="mlp",
                                   hp=thp)["target"][0]
  label = zlib.crc32(request.target_new.encode()) & 0x7FFFFFFF
  g = update_codebook(g, key, value, label=label, edit_id=edit_id,
                      eps_init=hp.radius(key))
  return probe.set_kernel(params, layer, g)


def rollback(params: Any, layer: int, edit_id: int) -> Any:
  """Deactivates every codebook entry of ``edit_id`` (the model then behaves as without it)."""
  g = probe.get_kernel(params, layer)
  return probe.set_kernel(params, layer, GraceKernel(g.w, g.keys, g.values, g.eps,
                                         g.active & (g.edit_id != edit_id), g.edit_id, g.labels))


def edit_many(module: Any, params: Any, tokenizer: Any,
              requests: Sequence[req_lib.EditRequest], *, layer: int, first_id: int = 0,
              hp: GraceParams = GraceParams()) -> Any:
  """Sequential GRACE edits (ids ``first_id, first_id + 1, ...``)."""
  for i, r in enumerate(requests):
    params = grace_edit(module, params, tokenizer, r, layer=layer, edit_id=first_id + i, hp=hp)
  return params
