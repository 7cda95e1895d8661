"""Constrained fine-tuning of one MLP output kernel (FT-L, the editing baseline).

Adam on the NLL of ``target_new`` after each request's prompt (each row's mean over its target
tokens, averaged over the minibatch), only the selected kernel trained,
projected after every step into ``W0 +- norm_constraint`` (elementwise, as EasyEdit's FT with
``norm_constraint``). One jitted ``lax.fori_loop``. The defaults are EasyEdit's constrained FT-L
(``hparams/FT/gpt2-xl_constr.json``, the FT-L of the ROME paper: 25 Adam steps, lr 5e-4,
``norm_constraint`` 5e-4, no weight decay, no KL term; minibatches of one request, as its
``llama-7b.yaml``, which uses the same steps and lr with ``norm_constraint: false``).

Example:
  >>> FTParams().num_steps, FTParams().lr, FTParams().norm_constraint
  (25, 0.0005, 0.0005)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxparams import tree as jtree
from jaxparams.edit import delta as delta_lib
from jaxparams.edit import evaluate, methods
from jaxparams.edit import requests as req_lib

__all__ = ["FTParams", "finetune"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FTParams:
  """FT-L hyperparameters: ``num_steps`` epochs over the requests in minibatches of
  ``batch_size`` (one Adam step each, skipped when the minibatch loss is below 1e-2, as
  EasyEdit's ``execute_ft``), learning rate, elementwise ``|W - W0| <= norm_constraint``."""
  num_steps: int = 25
  lr: float = 5e-4
  norm_constraint: float = 5e-4
  batch_size: int = 1

  def __post_init__(self):
    if self.batch_size < 1 or self.num_steps < 0:
      raise ValueError(f"FTParams: batch_size >= 1 and num_steps >= 0, found {self}")


@functools.partial(jax.jit, static_argnames=("module", "path", "hp"))
def _train(module, params, ids, mask, tmask, *, path, hp):
  flat = jtree.flatten(params)
  w0 = flat[path]
  n_chunks = ids.shape[0] // hp.batch_size

  def loss_fn(w, i):
    f = dict(flat)
    f[path] = w
    sl = lambda a: jax.lax.dynamic_slice_in_dim(a, i * hp.batch_size, hp.batch_size)
    x, m, t = sl(ids), sl(mask), sl(tmask)
    logits = module.apply({"params": jtree.unflatten(f)}, x, attention_mask=m)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
    tok = jnp.take_along_axis(logp, x[:, 1:, None], -1)[..., 0]
    n_tok = t[:, :-1].sum(-1)
    rows = n_tok > 0   # padding rows (no target) take no part
    per_row = -(tok * t[:, :-1]).sum(-1) / jnp.maximum(n_tok, 1)
    return jnp.sum(jnp.where(rows, per_row, 0.0)) / jnp.maximum(rows.sum(), 1)

  opt = optax.adam(hp.lr)

  def body(step, st):
    w, o = st
    loss, g = jax.value_and_grad(loss_fn)(w, step % n_chunks)
    u, o2 = opt.update(g, o, w)
    w2 = jnp.clip(optax.apply_updates(w, u), w0 - hp.norm_constraint, w0 + hp.norm_constraint)
    take = loss >= 1e-2
    return jax.tree.map(lambda a, b: jnp.where(take, a, b), (w2, o2), (w, o))

  w, _ = jax.lax.fori_loop(0, hp.num_steps * n_chunks, body, (w0, opt.init(w0)))
  return w - w0


def finetune(module: Any, params: Any, tokenizer: Any, requests: Sequence[req_lib.EditRequest], *,
             where: Any, hp: FTParams = FTParams()) -> tuple[Any, delta_lib.Delta]:
  """FT-L on the single kernel selected by ``where``; returns ``(new_params, Delta)``."""
  layers = methods.edited_layers(params, where)
  if len(layers) != 1:
    raise ValueError(f"FT-L trains one kernel; where= selected layers {layers}")
  path = f"layers_{layers[0]}/mlp/down_proj/kernel"
  ids, mask, tm = evaluate.encode_pairs(tokenizer, [r.prompt.replace("{}", r.subject)
                                                    for r in requests],
                                        [r.target_new for r in requests])
  pad = -len(ids) % hp.batch_size   # rows with no target: the last minibatch is short
  if pad:
    ids, mask, tm = (np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
                     for a in (ids, mask, tm))
  tmask = jnp.asarray(tm, jnp.float32)  # positions whose next token is a target token
  d = _train(module, params, jnp.asarray(ids), jnp.asarray(mask), tmask, path=path, hp=hp)
  return delta_lib.add_delta(params, {path: d}, {"method": "ft", "layers": layers})
