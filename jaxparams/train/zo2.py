"""ZO2: MeZO with the parameters in host memory, streamed to the device one block at a time.

ZO2 (Wang et al., 2025) keeps the transformer blocks in CPU memory and the embedding and head on
the device. Per step, each block is uploaded **once**: its pending update from the previous step
is applied (deferred update: ``g_{t-1}`` is only known after the whole forward), then both
perturbed passes (``θ+εz`` and ``θ-εz``, the "dual forward") go through it, and it is offloaded
back to host memory. While block ``i`` computes, block ``i+1`` is already being uploaded
(``device_put`` is asynchronous; the next one is issued before the current one is consumed) and
block ``i-1`` is being copied back (``copy_to_host_async``).

The trajectory equals eager :func:`jaxparams.train.zo.mezo_step` on the whole tree with the same
keys (same ``z`` per leaf: the leaf numbering of the full tree is kept through ``offset``), to
float32 rounding of the fused losses. Device memory holds the embedding, the head, the
activations of the two passes and three blocks (uploading, computing, offloading), whatever the
depth (:attr:`ZO2.peak_device_bytes` counts them).

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> model = BlockModel(
  ...     embed_keys=('emb',), block_keys=('b0', 'b1'), head_keys=('head',),
  ...     embed=lambda p, x: x @ p['emb'], block=lambda p, h: jnp.tanh(h @ p),
  ...     head=lambda p, h, x: jnp.mean((h @ p['head'] - 1.0) ** 2))
  >>> params = {k: np.eye(4, dtype=np.float32) for k in ('emb', 'b0', 'b1', 'head')}
  >>> driver = ZO2(model, params)
  >>> x = np.ones((8, 4), np.float32)
  >>> losses = [driver.step(x, jax.random.key(s), lr=0.05)['loss'] for s in range(100)]
  >>> losses[-1] < losses[0]
  True
  >>> sorted(driver.params())
  ['b0', 'b1', 'emb', 'head']
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.train import zo

__all__ = ["BlockModel", "ZO2", "leaf_offsets", "llama_block_model"]


@dataclasses.dataclass(frozen=True)
class BlockModel:
  """A model cut into an embedding, a stack of blocks and a head (top-level keys of the params).

  Attributes:
    embed_keys: Top-level param keys of the embedding (kept on the device).
    block_keys: Top-level keys of the blocks, in execution order (kept on the host).
    head_keys: Top-level keys of the head (kept on the device).
    embed: ``embed({k: params[k] for k in embed_keys}, batch) -> h``.
    block: ``block(params[block_key], h) -> h`` (the same function for every block).
    head: ``head({k: params[k] for k in head_keys}, h, batch) -> scalar loss``.
  """
  embed_keys: Sequence[str]
  block_keys: Sequence[str]
  head_keys: Sequence[str]
  embed: Callable[[Any, Any], jax.Array]
  block: Callable[[Any, jax.Array], jax.Array]
  head: Callable[[Any, jax.Array, Any], jax.Array]


def leaf_offsets(params: dict[str, Any]) -> dict[str, int]:
  """Index of each top-level key's first leaf in ``jax.tree.flatten(params)`` order."""
  out, n = {}, 0
  for key in sorted(params):
    out[key] = n
    n += len(jax.tree.leaves(params[key]))
  return out


def _host_copy(x: Any) -> np.ndarray:
  """A numpy copy (never a view of a device buffer that a later step may donate)."""
  return np.array(x, copy=True)


class ZO2:
  """Block-streamed MeZO driver holding the parameters (blocks in host memory as numpy).

  Args:
    model: The :class:`BlockModel`.
    params: The full parameter dict (its top-level keys are those of ``model``).
    config: :class:`jaxparams.train.zo.ZOConfig`.
    device: Target device (default the first).

  Raises:
    ValueError: if the model's keys do not cover ``params`` exactly.
  """

  def __init__(self, model: BlockModel, params: dict[str, Any],
               config: zo.ZOConfig = zo.ZOConfig(), device: jax.Device | None = None):
    keys = list(model.embed_keys) + list(model.block_keys) + list(model.head_keys)
    if sorted(keys) != sorted(params):
      raise ValueError(f"BlockModel keys {sorted(keys)} must be exactly the top-level param keys "
                       f"{sorted(params)}")
    self.model, self.config = model, config
    self.device = device or jax.devices()[0]
    self.offsets = leaf_offsets(params)
    # Own copies: the caller's arrays are never donated, the host blocks are plain numpy memory.
    self.host = {k: jax.tree.map(_host_copy, params[k]) for k in model.block_keys}
    self.resident = {k: jax.device_put(jax.tree.map(_host_copy, params[k]), self.device)
                     for k in list(model.embed_keys) + list(model.head_keys)}
    self.pending: tuple[jax.Array, jax.Array, float] | None = None
    self.peak_device_bytes = 0  # peak bytes of the device arrays the driver holds during a step
    n, eps = int(config.n_samples), float(config.eps)
    wd = float(config.weight_decay)

    def update(p, off, key, g, lr):
      return zo.apply_update(p, key, g, lr, weight_decay=wd, offset=off)

    def dual(p, off, key, h_plus, h_minus, fn):
      def one(k, hp, hm):
        kk = jax.random.fold_in(key, k)
        return fn(zo.perturb(p, kk, eps, off), hp), fn(zo.perturb(p, kk, -eps, off), hm)
      return jax.vmap(one)(jnp.arange(n), h_plus, h_minus)

    def first(p_embed, offs, key, batch):
      def one(k):
        kk = jax.random.fold_in(key, k)
        pp = {name: zo.perturb(p_embed[name], kk, eps, offs[name]) for name in p_embed}
        pm = {name: zo.perturb(p_embed[name], kk, -eps, offs[name]) for name in p_embed}
        return model.embed(pp, batch), model.embed(pm, batch)
      return jax.vmap(one)(jnp.arange(n))

    def last(p_head, offs, key, h_plus, h_minus, batch):
      def one(k, hp, hm):
        kk = jax.random.fold_in(key, k)
        pp = {name: zo.perturb(p_head[name], kk, eps, offs[name]) for name in p_head}
        pm = {name: zo.perturb(p_head[name], kk, -eps, offs[name]) for name in p_head}
        lp, lm = model.head(pp, hp, batch), model.head(pm, hm, batch)
        return (lp - lm) / (2.0 * eps), 0.5 * (lp + lm)
      g, losses = jax.vmap(one)(jnp.arange(n), h_plus, h_minus)
      return g, jnp.mean(losses)

    self._update = jax.jit(update, donate_argnums=0)
    self._dual = jax.jit(lambda *a: dual(*a, model.block), donate_argnums=(3, 4))
    self._first = jax.jit(first)
    self._last = jax.jit(last)

  def _track(self, *trees: Any) -> None:
    """Peak of the driver's own device arrays: resident params + the given blocks/activations."""
    live = sum(x.nbytes for x in jax.tree.leaves((self.resident, trees)))
    self.peak_device_bytes = max(self.peak_device_bytes, live)

  def _apply_pending(self, name: str, p: Any) -> Any:
    if self.pending is None:
      return p
    key, g, lr = self.pending
    return self._update(p, jnp.int32(self.offsets[name]), key, g, np.float32(lr))

  def step(self, batch: Any, key: jax.Array, lr: float) -> dict[str, float]:
    """One MeZO step (the previous step's update is applied on the way). Returns its loss."""
    m = self.model
    for name in list(m.embed_keys) + list(m.head_keys):
      self.resident[name] = self._apply_pending(name, self.resident[name])
    embed_p = {k: self.resident[k] for k in m.embed_keys}
    offs = lambda ks: {k: jnp.int32(self.offsets[k]) for k in ks}
    h_plus, h_minus = self._first(embed_p, offs(m.embed_keys), key, batch)
    blocks = list(m.block_keys)
    upload = lambda name: jax.device_put(self.host[name], self.device)
    nxt = upload(blocks[0]) if blocks else None
    offloads = []
    for i, name in enumerate(blocks):
      cur = nxt
      nxt = upload(blocks[i + 1]) if i + 1 < len(blocks) else None  # prefetch
      cur = self._apply_pending(name, cur)
      h_plus, h_minus = self._dual(cur, jnp.int32(self.offsets[name]), key, h_plus, h_minus)
      jax.tree.map(lambda x: x.copy_to_host_async(), cur)
      offloads.append((name, cur))
      self._track(nxt, [blk for _, blk in offloads], h_plus, h_minus)
      if len(offloads) > 1:  # block i-1's copy has had block i's compute to finish
        done_name, done = offloads.pop(0)
        self.host[done_name] = jax.tree.map(_host_copy, done)
    head_p = {k: self.resident[k] for k in m.head_keys}
    g, loss = self._last(head_p, offs(m.head_keys), key, h_plus, h_minus, batch)
    for done_name, done in offloads:
      self.host[done_name] = jax.tree.map(_host_copy, done)
    self.pending = (key, g, float(lr))
    return {"loss": float(loss), "projected_grad": float(jnp.sqrt(jnp.mean(g ** 2)))}

  def flush(self) -> None:
    """Applies the pending update to every block (call before reading the final params)."""
    if self.pending is None:
      return
    for name in self.resident:
      self.resident[name] = self._apply_pending(name, self.resident[name])
    for name in self.model.block_keys:
      p = self._apply_pending(name, jax.device_put(self.host[name], self.device))
      self.host[name] = jax.tree.map(_host_copy, p)
    self.pending = None

  def params(self) -> dict[str, Any]:
    """The current parameters (pending update applied) as a host (numpy) dict."""
    self.flush()
    out = {k: jax.tree.map(_host_copy, v) for k, v in self.resident.items()}
    out.update(self.host)
    return out


def llama_block_model(config: Any) -> BlockModel:
  """:class:`BlockModel` of :class:`jaxparams.models.Llama` (untied head) for byte-LM batches.

  ``batch`` is ``int[b, t + 1]``: inputs ``batch[:, :-1]``, targets ``batch[:, 1:]``; the loss
  is the mean cross-entropy, as the trainer's.
  """
  import optax  # pylint: disable=g-import-not-at-top
  from jaxparams.models.layers import RMSNorm  # pylint: disable=g-import-not-at-top
  from jaxparams.models.llama import LlamaBlock  # pylint: disable=g-import-not-at-top
  if config.tie_word_embeddings:
    raise ValueError("llama_block_model needs an untied head (tie_word_embeddings=False)")
  n = config.num_hidden_layers

  def embed(p, batch):
    return jnp.take(p["embed_tokens"]["embedding"], batch[:, :-1], axis=0)

  def block(p, h):
    b, t = h.shape[:2]
    mask = jnp.tril(jnp.ones((t, t), dtype=bool))[None]
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    return LlamaBlock(config).apply({"params": p}, h, mask, pos)

  def head(p, h, batch):
    h = RMSNorm(config.rms_norm_eps).apply({"params": p["norm"]}, h)
    logits = h @ p["lm_head"]["kernel"]
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch[:, 1:]).mean()

  return BlockModel(embed_keys=("embed_tokens",), block_keys=tuple(f"layers_{i}" for i in range(n)),
                    head_keys=("lm_head", "norm"), embed=embed, block=block, head=head)
