"""WISE: a side memory beside one FFN value matrix, activation routing and knowledge shards.

Follows EasyEdit's ``easyeditor/models/wise/WISE.py`` (non-retrieve mode). The edited kernel leaf
(layer ``l``'s MLP output projection, the "value matrix") becomes a :class:`WiseKernel`: the
original matrix ``w`` (main memory), the merged side memory ``side`` and the side memory being
edited ``new``, with the routing threshold ``thr``. Run the model with
``Llama(config, dot=wise.dot)``: for every token, with ``a`` the MLP activation function and
``d(W') = ||a(x W') - a(x w)||``, the output is ``x w`` when both ``d(side)`` and ``d(new)`` are
below ``thr``, else the side memory with the larger distance (``jnp.where``, no Python branch).
So an input that activates no side memory gets exactly the original output.

An edit trains ``new`` (SGD, ``edit_lr``, ``n_iter`` steps, weight decay 1e-5, the gradient
multiplied by the shard's random mask ``M ~ Bernoulli(mask_ratio)``, ``new`` clamped into
``w +- norm_constraint`` after each step) on the target's NLL plus the activation margins
``[alpha, beta, gamma] = act_margin`` (``max(0, d_out - alpha) + max(0, beta - d_in) +
max(0, d_out - d_in + gamma)``, each averaged over its positive entries as the reference;
``d_in`` on the edit rows -- every token (``in_scope='all'``, the reference without an
``act_mask``) or the positions that predict the target (``'target'``) --, ``d_out`` on an
irrelevant prompt). The edit rows are the prompt under each context template
(``templates``; the reference uses ``"{}"`` and 10 sampled prefixes). ``thr = act_ratio * min d_in``
over the edits so far. Every ``save_freq`` edits the shard ``new`` is saved and reset to ``w``
(and a new mask drawn); every ``merge_freq`` edits (and in :func:`finalize`, as the reference
before inference) the saved shards are merged into ``side`` with the TIES record of
:mod:`jaxparams.merge` (``weights / n_shards`` each, ``density = densities``, normalised; merged
again with the previous ``side`` at weights ``0.4 / n`` and ``0.6`` once one exists).

Retrieve (``WiseParams(retrieve=True)``, the reference's ``retrieve: True``, WISE-Retrieve):
every ``save_freq`` edits the shard is kept as its own memory (``mem``) with its own threshold
(``act_ratio`` x the minimum in-scope distance of *its* edits) instead of being merged; every
``merge_freq`` edits the last ``merge_freq // save_freq`` memories are TIES-merged into one (their
threshold the smallest). Routing: the memory whose distance is largest among those above their
own threshold and above the shard being edited; else the shard being edited when its distance
reaches its threshold; else the original output.

Departure: routing is per token (the reference routes a whole sequence, prompt and target
tokens together, on its mean distance, with a batch of one); per-token routing needs no
attention mask inside ``dot=``, keeps padding from changing any output and is causal (a
prompt's next-token prediction does not depend on the target being scored). A causal running
mean over the tokens so far routed almost no edit prompt on the facts LM (the prompt alone stays
below the threshold its target tokens helped set), so it is not offered. The reference's
whole-sequence mean is not offered either: ``dot=`` sees a padded batch without its mask, so
padding would move the mean (the reference scores one unpadded sequence at a time).

Example:
  >>> import jax.numpy as jnp
  >>> k = WiseKernel.wrap(jnp.eye(2))
  >>> dot(jnp.array([[1., 0.]]), k).tolist()   # no edits: the original output
  [[1.0, 0.0]]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.edit import evaluate, probe
from jaxparams.edit import facts as facts_lib
from jaxparams.edit import requests as req_lib

__all__ = ["WiseKernel", "WiseParams", "WiseState", "dot", "wrap_params", "wise_edit",
           "finalize", "merge_shards"]

_ACT = {"silu": jax.nn.silu, "gelu": functools.partial(jax.nn.gelu, approximate=False),
        "relu": jax.nn.relu, "gelu_new": functools.partial(jax.nn.gelu, approximate=True)}


@dataclasses.dataclass(frozen=True)
class WiseKernel:
  """Arrays: ``w`` (original ``[d_k, d_v]``), ``side`` (merged side memory), ``new`` (side
  memory being edited), ``thr`` (routing threshold, ``inf`` before any edit) and ``editing``
  (bool: while training, the layer outputs ``x new`` for every token). ``act`` (static) is the
  activation of the routing distance (the model's ``hidden_act``)."""
  w: jax.Array
  side: jax.Array
  new: jax.Array
  thr: jax.Array
  editing: jax.Array
  act: str = "silu"
  mem: jax.Array | None = None
  mem_thr: jax.Array | None = None

  @classmethod
  def wrap(cls, w: jax.Array, act: str = "silu", memories: int = 0) -> "WiseKernel":
    """``memories``: room for retrieve-mode memories (``mem [memories, d_k, d_v]``, thresholds
    ``inf`` = empty); 0 for the merge mode."""
    if act not in _ACT:
      raise ValueError(f"unknown activation {act!r}; valid: {', '.join(_ACT)}")
    mem = mem_thr = None
    if memories:
      mem = jnp.zeros((memories,) + w.shape, w.dtype)
      mem_thr = jnp.full((memories,), jnp.inf, jnp.float32)
    return cls(w, w, w, jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(False), act, mem,
               mem_thr)

  @property
  def n_mem(self) -> int:
    """Retrieve-mode memories stored."""
    return 0 if self.mem_thr is None else int(jnp.sum(jnp.isfinite(self.mem_thr)))

  def add_memory(self, m: jax.Array, thr: float | jax.Array) -> "WiseKernel":
    """Stores a memory with its threshold (doubling the room when full)."""
    n = self.n_mem
    mem = self.mem if self.mem is not None else jnp.zeros((0,) + m.shape, m.dtype)
    mem_thr = self.mem_thr if self.mem_thr is not None else jnp.zeros((0,), jnp.float32)
    if n == mem.shape[0]:
      extra = max(1, n)
      mem = jnp.concatenate([mem, jnp.zeros((extra,) + mem.shape[1:], mem.dtype)])
      mem_thr = jnp.concatenate([mem_thr, jnp.full((extra,), jnp.inf, jnp.float32)])
    return self.replace(mem=mem.at[n].set(m.astype(mem.dtype)),
                        mem_thr=mem_thr.at[n].set(jnp.asarray(thr, jnp.float32)))

  def replace(self, **kw) -> "WiseKernel":
    return dataclasses.replace(self, **kw)


jax.tree_util.register_pytree_node(
    WiseKernel, lambda g: ((g.w, g.side, g.new, g.thr, g.editing, g.mem, g.mem_thr), g.act),
    lambda act, ch: WiseKernel(*ch[:5], act=act, mem=ch[5], mem_thr=ch[6]))


def _dist(act, y, y0, *, safe: bool = False):
  """``||a(y) - a(y0)||`` over the last axis; ``safe``: a finite gradient at 0 (training starts
  from ``new == w``, where the plain norm's gradient is NaN)."""
  f = _ACT[act]
  diff = f(y.astype(jnp.float32)) - f(y0.astype(jnp.float32))
  if safe:
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1) + 1e-12)
  return jnp.linalg.norm(diff, axis=-1)


def dot(x: jax.Array, kernel: Any) -> jax.Array:
  """The ``dot=`` injection: WISE routing for :class:`WiseKernel` leaves, matmul otherwise."""
  if not isinstance(kernel, WiseKernel):
    return jnp.matmul(x, kernel.astype(x.dtype))
  y0 = jnp.matmul(x, kernel.w.astype(x.dtype))
  ys = jnp.matmul(x, kernel.side.astype(x.dtype))
  yn = jnp.matmul(x, kernel.new.astype(x.dtype))
  ds, dn = _dist(kernel.act, ys, y0), _dist(kernel.act, yn, y0)
  keep = (ds < kernel.thr) & (dn < kernel.thr)
  routed = jnp.where(keep[..., None], y0, jnp.where((ds > dn)[..., None], ys, yn))
  if kernel.mem is not None:  # retrieve: the farthest memory past its own threshold and dn
    ym = jnp.einsum("...k,mkv->...mv", x, kernel.mem.astype(x.dtype))
    dm = _dist(kernel.act, ym, y0[..., None, :])
    ok = (dm > kernel.mem_thr) & (dm > jnp.maximum(ds, dn)[..., None])
    dm = jnp.where(ok, dm, -jnp.inf)
    j = jnp.argmax(dm, axis=-1)
    pick = jnp.take_along_axis(ym, j[..., None, None], axis=-2)[..., 0, :]
    routed = jnp.where(jnp.any(ok, axis=-1)[..., None], pick, routed)
  return jnp.where(kernel.editing, yn, routed)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WiseParams:
  """WISE hyperparameters (EasyEdit ``hparams/WISE/llama-7b.yaml``).

  ``act_margin = (alpha, beta, gamma)`` and ``norm_constraint`` are absolute distances/weight
  offsets tuned for 7B models (4096-wide); smaller models need them scaled (EasyEdit issues
  #423/#446).
  """
  edit_lr: float = 1.0
  n_iter: int = 70
  norm_constraint: float = 1.0
  act_margin: tuple[float, float, float] = (5.0, 20.0, 10.0)
  act_ratio: float = 0.88
  mask_ratio: float = 0.2
  save_freq: int = 500
  merge_freq: int = 1000
  densities: float = 0.53
  weights: float = 1.0
  weight_decay: float = 1e-5
  in_scope: str = "all"
  retrieve: bool = False

  def __post_init__(self):
    if self.in_scope not in ("all", "target"):
      raise ValueError(f"WiseParams.in_scope={self.in_scope!r}; valid: 'all', 'target'")
    if self.save_freq < 1 or self.merge_freq < self.save_freq:
      raise ValueError(f"WiseParams: save_freq={self.save_freq}, merge_freq={self.merge_freq}: "
                       "need 1 <= save_freq <= merge_freq")


@dataclasses.dataclass(frozen=True)
class WiseState:
  """Editing state outside the params: edits made, the minimum in-scope distance, the saved
  shards (not yet merged), the current shard's gradient mask and the seed of the masks."""
  count: int = 0
  min_act: float = float("inf")
  shards: tuple[jax.Array, ...] = ()
  mask: jax.Array | None = None
  seed: int = 0




def wrap_params(params: Any, layer: int, act: str = "silu", memories: int = 0) -> Any:
  """Replaces layer ``layer``'s MLP output kernel by a :class:`WiseKernel` without edits
  (``memories``: room for the retrieve mode's memories, grown when full)."""
  try:
    w = probe.get_kernel(params, layer)
  except (KeyError, TypeError):
    raise ValueError(f"params have no leaf {probe.kernel_path(layer)!r}") from None
  return probe.set_kernel(params, layer, WiseKernel.wrap(w, act, memories))


def merge_shards(w: jax.Array, shards: Sequence[jax.Array], side: jax.Array | None,
                 hp: WiseParams = WiseParams()) -> jax.Array:
  """TIES merge of the shards' task vectors over ``w`` (``merge_weight``); with a previous side
  memory ``side`` (not equal to ``w``) it joins the merge at weight 0.6, the shards 0.4/n."""
  from jaxparams import merge  # pylint: disable=g-import-not-at-top
  n = len(shards)
  models = [{"w": s} for s in shards]
  weights = [hp.weights / n] * n
  if side is not None and not bool(jnp.array_equal(side, w)):
    models.append({"w": side})
    weights = [0.4 / n] * n + [0.6]
  out = merge.ties({"w": w}, models, weights=weights, density=hp.densities, normalize=True)
  return out["w"]


def _pos_mean(v):
  pos = v > 0
  return jnp.sum(jnp.where(pos, v, 0.0)) / jnp.maximum(jnp.sum(pos), 1)


@functools.partial(jax.jit, static_argnames=("module", "layer", "hp"))
def _train(module, params, ids, mask, tmask, is_edit, grad_mask, *, layer, hp: WiseParams):
  k0 = probe.get_kernel(params, layer)
  w = k0.w.astype(jnp.float32)
  alpha, beta, gamma = hp.act_margin
  m = mask.astype(jnp.float32)
  n_tgt = jnp.maximum(tmask.sum(-1), 1.0)

  def losses(nw):
    p = probe.set_kernel(params, layer, k0.replace(new=nw, editing=jnp.asarray(True)))
    out = probe.run(module, p, ids, mask, keys=(layer,))
    logp = jax.nn.log_softmax(out.logits[:, :-1].astype(jnp.float32), -1)
    tok = jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    nll_rows = -(tok * tmask[:, :-1]).sum(-1) / n_tgt
    nll = jnp.sum(jnp.where(is_edit, nll_rows, 0.0)) / jnp.maximum(is_edit.sum(), 1)
    x = out.keys[layer].astype(jnp.float32)
    d = _dist(k0.act, x @ nw, x @ w, safe=True)
    # In-scope distance over the edit rows' answer positions (``in_scope='target'``) or all
    # their tokens ('all', the reference's mean without an act_mask); out-of-scope: the
    # irrelevant row's tokens.
    site = jnp.where(is_edit[:, None], tmask, m) if hp.in_scope == "target" else m
    d_row = (d * site).sum(-1) / jnp.maximum(site.sum(-1), 1.0)
    d_in = jnp.where(is_edit, d_row, jnp.nan)
    d_out = jnp.where(is_edit, jnp.nan, d_row)
    pair = d_out[None, :] - d_in[:, None] + gamma
    valid = is_edit[:, None] & ~is_edit[None, :]
    l1 = _pos_mean(jnp.where(valid, pair, 0.0))
    l2 = _pos_mean(jnp.where(is_edit, 0.0, d_row - alpha))
    l3 = _pos_mean(jnp.where(is_edit, beta - d_row, 0.0))
    in_mean = jnp.sum(jnp.where(is_edit, d_row, 0.0)) / jnp.maximum(is_edit.sum(), 1)
    return nll + l1 + l2 + l3, (nll, in_mean)

  def body(_, nw):
    g, _aux = jax.grad(losses, has_aux=True)(nw)
    g = g * grad_mask + hp.weight_decay * nw
    nw = nw - hp.edit_lr * g
    return jnp.clip(nw, w - hp.norm_constraint, w + hp.norm_constraint)

  nw = jax.lax.fori_loop(0, hp.n_iter, body, k0.new.astype(jnp.float32))
  _, (nll, in_mean) = losses(nw)
  return nw.astype(k0.new.dtype), nll, in_mean


def _rows(tokenizer, request, templates, loc_prompt):
  """Edit rows (``<s> template(prompt) target``; a template may hold ``<s>`` between its
  context prefix and the prompt, as :func:`requests.context_templates` writes) and one
  irrelevant row (``<s> loc_prompt``), padded together."""
  bos = tokenizer.token_to_id(facts_lib.BOS)
  words = lambda t: facts_lib.encode_words(tokenizer, t, what="prompt") if t.strip() else []
  prompt = request.prompt.replace("{}", request.subject)
  tgt = facts_lib.encode_words(tokenizer, request.target_new, what="target")
  rows, tmask = [], []
  for t in templates:
    ids = [bos]
    for j, part in enumerate(t.replace("{}", prompt).split(facts_lib.BOS)):
      ids += ([bos] if j else []) + words(part)
    ids = ids[:1] + [i for k, i in enumerate(ids[1:]) if not (k == 0 and i == bos)]
    rows.append(ids + tgt)
    tmask.append([0] * (len(ids) - 1) + [1] * len(tgt))
  rows.append([bos] + words(loc_prompt))
  tmask.append([])
  n = len(rows)
  width = -(-max(map(len, rows)) // 8) * 8
  ids, mask, tm = (np.zeros((n, width), np.int32) for _ in range(3))
  for i, (r, m) in enumerate(zip(rows, tmask)):
    ids[i, :len(r)], mask[i, :len(r)], tm[i, :len(m)] = r, 1, m
  is_edit = np.arange(n) < n - 1
  return ids, mask, tm.astype(np.float32), is_edit


def wise_edit(module: Any, params: Any, tokenizer: Any, request: req_lib.EditRequest, *,
              layer: int, loc_prompt: str, state: WiseState = WiseState(),
              templates: Sequence[str] = ("{}",), hp: WiseParams = WiseParams()
              ) -> tuple[Any, WiseState, dict[str, float]]:
  """One WISE edit on params wrapped by :func:`wrap_params` (``module`` runs with
  ``dot=wise.dot``). Returns ``(params, state, info)``; ``loc_prompt`` is an irrelevant prompt
  (the reference draws one from its training split)."""
  request.check(tokenizer)
  k = probe.get_kernel(params, layer)
  if not isinstance(k, WiseKernel):
    raise ValueError(f"layer {layer} kernel is not a WiseKernel: call wise.wrap_params first")
  mask = state.mask
  if state.count % hp.save_freq == 0 or mask is None:
    key = jax.random.fold_in(jax.random.key(state.seed), state.count // hp.save_freq)
    mask = jax.random.bernoulli(key, hp.mask_ratio, k.w.shape).astype(jnp.float32)
  ids, am, tm, is_edit = _rows(tokenizer, request, templates, loc_prompt)
  bare = probe.set_kernel(params, layer, k.replace(mem=None, mem_thr=None))  # one compile
  nw, nll, in_mean = _train(module, bare, jnp.asarray(ids), jnp.asarray(am), jnp.asarray(tm),
                            jnp.asarray(is_edit), mask, layer=layer, hp=hp)
  min_act = min(state.min_act, float(in_mean))
  k = k.replace(new=nw, thr=jnp.asarray(hp.act_ratio * min_act, jnp.float32))
  count, shards = state.count + 1, state.shards
  if hp.retrieve:  # the shard becomes a memory of its own; its threshold starts again
    if count % hp.save_freq == 0:
      k = k.add_memory(nw, hp.act_ratio * min_act).replace(
          new=k.w, thr=jnp.asarray(jnp.inf, jnp.float32))
      min_act = float("inf")
    if count % hp.merge_freq == 0:
      k = _merge_memories(k, hp.merge_freq // hp.save_freq, hp)
    params = probe.set_kernel(params, layer, k)
    return (params, WiseState(count, min_act, (), mask, state.seed),
            {"nll": float(nll), "act": float(in_mean)})
  if count % hp.save_freq == 0:
    shards = shards + (nw,)
    k = k.replace(new=k.w)
  new_state = WiseState(count, min_act, shards, mask, state.seed)
  params = probe.set_kernel(params, layer, k)
  if count % hp.merge_freq == 0:
    params, new_state = finalize(params, layer, new_state, hp)
  return params, new_state, {"nll": float(nll), "act": float(in_mean)}


def _merge_memories(k: WiseKernel, n: int, hp: WiseParams) -> WiseKernel:
  """Retrieve mode: TIES-merges the last ``n`` memories into one (``weights / n`` each), whose
  threshold is the smallest of theirs (the reference's ``merge_weight`` with ``retrieve``)."""
  have = k.n_mem
  if have < n:
    raise ValueError(f"WISE retrieve: {have} memories stored, cannot merge the last {n}")
  idx = list(range(have - n, have))
  merged = merge_shards(k.w, [k.mem[i] for i in idx], None, hp)
  thr = jnp.min(k.mem_thr[jnp.asarray(idx)])
  mem = k.mem.at[have - n + 1:have].set(0).at[have - n].set(merged.astype(k.mem.dtype))
  mem_thr = k.mem_thr.at[have - n + 1:have].set(jnp.inf).at[have - n].set(thr)
  return k.replace(mem=mem, mem_thr=mem_thr)


def finalize(params: Any, layer: int, state: WiseState, hp: WiseParams = WiseParams()
             ) -> tuple[Any, WiseState]:
  """Merges the saved shards (and the current one, once ``save_freq`` edits were made, as the
  reference does before inference) into the side memory with TIES; no-op otherwise and in the
  retrieve mode (the reference routes to the shard being edited there)."""
  if hp.retrieve:
    return params, state
  k = probe.get_kernel(params, layer)
  shards = state.shards
  if state.count >= hp.save_freq and not bool(jnp.array_equal(k.new, k.w)):
    shards = shards + (k.new,)
  if not shards or state.count < hp.save_freq:
    return params, state
  side = merge_shards(k.w, shards, k.side, hp)
  k = k.replace(side=side, new=k.w)
  return probe.set_kernel(params, layer, k), dataclasses.replace(state, shards=())
