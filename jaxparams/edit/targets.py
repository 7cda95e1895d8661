"""Target vectors of locate-then-edit methods: ROME's ``v*`` and MEMIT/AlphaEdit's ``z``.

A vector ``delta`` is added at the subject's last token (to layer ``l``'s MLP output for ROME,
``compute_v.py``; to block ``l``'s output for MEMIT, ``compute_z.py``) and optimised with Adam on

  NLL(target | each context template + prompt) + kl_factor * KL(p(.|"{} is a") || p_0)
  + v_weight_decay * ||delta|| / ||h_0||^2,

projecting ``delta`` into ``||delta|| <= clamp_norm_factor * ||h_0||`` after each step and
stopping once the loss is below ``5e-2`` (at most ``v_num_grad_steps - 1`` updates, as the
reference loop). The target is ``h_0 + delta``. All requests are optimised at once: the loop is
one jitted ``lax.fori_loop``, ``vmap``-ed over requests (each with its own early stop).

Example:
  >>> TargetParams().v_lr, TargetParams().clamp_norm_factor
  (0.5, 4.0)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxparams.edit import mlm, probe
from jaxparams.edit import requests as req_lib

__all__ = ["TargetParams", "Batch", "encode_batch", "optimize_targets"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetParams:
  """Hyperparameters of the target optimisation (ROME's defaults, ``hparams/ROME/*.json``).

  Attributes:
    v_lr: Adam learning rate.
    v_num_grad_steps: Loop length (at most ``v_num_grad_steps - 1`` updates).
    kl_factor: Weight of the KL term on ``kl_prompts``.
    v_weight_decay: Weight of ``||delta|| / ||h_0||^2``.
    clamp_norm_factor: ``||delta|| <= clamp_norm_factor * ||h_0||``.
    kl_prompts: Essence prompts for the KL term.
    stop_loss: Early stop threshold.
    fact_token: ``'subject_last'`` (reference default) or ``'last'`` (the prompt's last token),
      where keys are read and the target is optimised.
  """
  v_lr: float = 0.5
  v_num_grad_steps: int = 20
  kl_factor: float = 0.0625
  v_weight_decay: float = 0.5
  clamp_norm_factor: float = 4.0
  kl_prompts: tuple[str, ...] = ("{} is a",)
  stop_loss: float = 5e-2
  fact_token: str = "subject_last"


@dataclasses.dataclass
class Batch:
  """Token rows of several requests, ``[n_requests, rows, T]`` (rows = templates + KL prompts).

  ``lookup`` is the subject's last token per row, ``tmask`` marks positions whose next token is
  a target token, ``is_kl`` the KL rows; ``edit_ids/edit_mask/edit_lookup`` the plain edit prompt
  (template ``{}``) of each request. A masked LM's batch
  (:func:`encode_batch_mlm`) also has ``labels`` (the target token at each
  position ``tmask`` marks, instead of the next token) and ``kl_pos`` (where the KL term reads
  the prediction, instead of ``lookup``).
  """
  ids: np.ndarray
  mask: np.ndarray
  tmask: np.ndarray
  lookup: np.ndarray
  is_kl: np.ndarray
  n_target: np.ndarray
  labels: np.ndarray | None = None
  kl_pos: np.ndarray | None = None


def _pad_to(rows: Sequence[Sequence[int]], t: int) -> np.ndarray:
  out = np.zeros((len(rows), t), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def encode_batch_mlm(tokenizer: Any, requests: Sequence[Any], templates: Sequence[str],
                     kl_prompts: Sequence[str], fact_token: str = "subject_last") -> Batch:
  """:func:`encode_batch` for a masked LM: ``labels`` hold the target token at each ``[MASK]``
  (``tmask`` marks them) and ``kl_pos`` the mask of the KL prompts
  (:func:`jaxparams.edit.mlm.encode_rows_mlm`)."""
  return Batch(**mlm.encode_rows_mlm(tokenizer, requests, templates, kl_prompts, fact_token))


def encode_batch(tokenizer: Any, requests: Sequence[req_lib.EditRequest], templates: Sequence[str],
                 kl_prompts: Sequence[str], fact_token: str = "subject_last", *,
                 masked: bool = False) -> Batch:
  """Encodes every request under every template, plus its KL prompts (``masked``: as a masked
  LM's cloze rows, :func:`encode_batch_mlm`)."""
  if masked:
    return encode_batch_mlm(tokenizer, requests, templates, kl_prompts, fact_token)
  all_rows, all_look, all_t = [], [], []
  for r in requests:
    rows, look, tpos = [], [], []
    for tpl in templates:
      ids, lk, tp = req_lib.encode_request(tokenizer, r, tpl, fact_token=fact_token)
      rows.append(ids), look.append(lk), tpos.append(tp)
    for kp in kl_prompts:
      kr = req_lib.EditRequest(kp, r.subject, r.target_new)
      ids, lk, _ = req_lib.encode_request(tokenizer, kr, "{}", with_target=False,
                                          fact_token=fact_token)
      rows.append(ids), look.append(lk), tpos.append([])
    all_rows.append(rows), all_look.append(look), all_t.append(tpos)
  t = max(len(x) for rows in all_rows for x in rows)
  t = -(-t // 8) * 8
  ids = np.stack([_pad_to(rows, t) for rows in all_rows])
  mask = np.stack([_pad_to([[1] * len(x) for x in rows], t) for rows in all_rows])
  tmask = np.zeros_like(ids, np.float32)
  for i, tp in enumerate(all_t):
    for j, ps in enumerate(tp):
      tmask[i, j, ps] = 1.0
  n_kl = len(kl_prompts)
  is_kl = np.zeros(ids.shape[:2], bool)
  if n_kl:
    is_kl[:, -n_kl:] = True
  n_target = np.asarray([len(req_lib.encode_text(tokenizer, r.target_new)) for r in requests],
                        np.float32)
  return Batch(ids, mask, tmask, np.asarray(all_look, np.int32), is_kl, n_target)


def _one_request(module, params, ids, mask, tmask, lookup, is_kl, n_target, labels=None,
                 kl_pos=None, *, layer, site, hp: TargetParams):
  """Optimises the delta of one request; returns ``(target, h_0, final loss, steps)``."""
  add_key = "add_mlp" if site == "mlp" else "add_block"
  capture = {"hidden": (layer,)} if site == "block" else {}

  def forward(delta):
    out = probe.run(module, params, ids, mask, **{add_key: (layer, delta, lookup)}, **capture)
    return out

  zero = jnp.zeros((module.config.hidden_size,), jnp.float32)
  # h_0: the vector at the edit site, first (plain "{}") template, before any delta.
  if site == "mlp":
    out0 = probe.run(module, params, ids[:1], mask[:1], mlp_out=(layer,))
    h0 = out0.mlp_out[layer][0, lookup[0]].astype(jnp.float32)
  else:
    out0 = probe.run(module, params, ids[:1], mask[:1], hidden=(layer,))
    h0 = out0.hidden[layer][0, lookup[0]].astype(jnp.float32)
  logits0 = forward(zero).logits.astype(jnp.float32)
  kl_at = lookup if kl_pos is None else kl_pos
  kl_rows = jnp.take_along_axis(logits0, kl_at[:, None, None], 1)[:, 0]
  kl_init = jax.nn.log_softmax(kl_rows, -1)
  n_kl = jnp.maximum(is_kl.sum(), 1)
  n_rw = jnp.maximum((~is_kl).sum(), 1)

  def loss_fn(delta):
    logits = forward(delta).logits.astype(jnp.float32)
    if labels is None:  # causal: position p predicts ids[p + 1]
      logp = jax.nn.log_softmax(logits[:, :-1], -1)
      tok = jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
      nll_each = -(tok * tmask[:, :-1]).sum(-1) / n_target
    else:  # masked LM: position p predicts labels[p]
      logp = jax.nn.log_softmax(logits, -1)
      tok = jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
      nll_each = -(tok * tmask).sum(-1) / n_target
    nll = jnp.where(is_kl, 0.0, nll_each).sum() / n_rw
    kl_logp = jax.nn.log_softmax(
        jnp.take_along_axis(logits, kl_at[:, None, None], 1)[:, 0], -1)
    kl_each = (jnp.exp(kl_logp) * (kl_logp - kl_init)).sum(-1)
    kl = hp.kl_factor * jnp.where(is_kl, kl_each, 0.0).sum() / n_kl
    # ||delta|| with a zero (sub)gradient at 0, as torch.norm's backward.
    norm = jnp.sqrt(jnp.maximum(jnp.sum(delta ** 2), jnp.finfo(jnp.float32).tiny))
    wd = hp.v_weight_decay * norm / jnp.sum(h0 ** 2)
    return nll + kl + wd

  opt = optax.adam(hp.v_lr)
  max_norm = hp.clamp_norm_factor * jnp.linalg.norm(h0)

  def body(_, state):
    delta, opt_state, done, steps, last = state
    loss, grad = jax.value_and_grad(loss_fn)(delta)
    stop = done | (loss < hp.stop_loss)
    upd, new_opt = opt.update(grad, opt_state, delta)
    new_delta = optax.apply_updates(delta, upd)
    norm = jnp.linalg.norm(new_delta)
    new_delta = jnp.where(norm > max_norm, new_delta * max_norm / norm, new_delta)
    keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(stop, x, y), a, b)
    return (keep(delta, new_delta), keep(opt_state, new_opt), stop,
            steps + (~stop).astype(jnp.int32), jnp.where(done, last, loss))

  init = (zero, opt.init(zero), jnp.asarray(False), jnp.asarray(0, jnp.int32),
          jnp.asarray(jnp.inf, jnp.float32))
  delta, _, _, steps, last = jax.lax.fori_loop(0, hp.v_num_grad_steps - 1, body, init)
  return h0 + delta, h0, last, steps


@functools.partial(jax.jit, static_argnames=("module", "layer", "site", "hp"))
def _optimize(module, params, ids, mask, tmask, lookup, is_kl, n_target, labels=None,
              kl_pos=None, *, layer, site, hp):
  fn = functools.partial(_one_request, module, params, layer=layer, site=site, hp=hp)
  return jax.vmap(fn)(ids, mask, tmask, lookup, is_kl, n_target, labels, kl_pos)


def optimize_targets(module: Any, params: Any, batch: Batch, *, layer: int, site: str,
                     hp: TargetParams = TargetParams()) -> dict[str, jax.Array]:
  """Targets for every request of ``batch``: ``{'target': [n, d], 'init': [n, d], 'loss': [n],
  'steps': [n]}``; ``site`` is ``'mlp'`` (ROME) or ``'block'`` (MEMIT/AlphaEdit)."""
  if site not in ("mlp", "block"):
    raise ValueError(f"site must be 'mlp' or 'block', found {site!r}")
  target, init, loss, steps = _optimize(
      module, params, jnp.asarray(batch.ids), jnp.asarray(batch.mask), jnp.asarray(batch.tmask),
      jnp.asarray(batch.lookup), jnp.asarray(batch.is_kl), jnp.asarray(batch.n_target),
      None if batch.labels is None else jnp.asarray(batch.labels),
      None if batch.kl_pos is None else jnp.asarray(batch.kl_pos), layer=layer, site=site, hp=hp)
  return {"target": target, "init": init, "loss": loss, "steps": steps}
