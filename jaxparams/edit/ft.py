"""Constrained fine-tuning of one MLP output kernel (FT-L, the editing baseline).

Adam on the NLL of ``target_new`` after each request's prompt, only the selected kernel trained,
projected after every step into ``W0 +- norm_constraint`` (elementwise, as EasyEdit's FT with
``norm_constraint``). One jitted ``lax.fori_loop``.

Example:
  >>> FTParams().num_steps, FTParams().norm_constraint
  (25, 0.005)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxparams import tree as jtree
from jaxparams.edit import delta as delta_lib
from jaxparams.edit import evaluate, methods
from jaxparams.edit import requests as req_lib

__all__ = ["FTParams", "finetune"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FTParams:
  """FT-L hyperparameters: steps, learning rate, elementwise ``|W - W0| <= norm_constraint``."""
  num_steps: int = 25
  lr: float = 5e-4
  norm_constraint: float = 5e-3


@functools.partial(jax.jit, static_argnames=("module", "path", "hp"))
def _train(module, params, ids, mask, tmask, *, path, hp):
  flat = jtree.flatten(params)
  w0 = flat[path]

  def loss_fn(w):
    f = dict(flat)
    f[path] = w
    logits = module.apply({"params": jtree.unflatten(f)}, ids, attention_mask=mask)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
    tok = jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    return -(tok * tmask[:, :-1]).sum() / jnp.maximum(tmask.sum(), 1)

  opt = optax.adam(hp.lr)

  def body(_, st):
    w, o = st
    g = jax.grad(loss_fn)(w)
    u, o = opt.update(g, o, w)
    w = jnp.clip(optax.apply_updates(w, u), w0 - hp.norm_constraint, w0 + hp.norm_constraint)
    return w, o

  w, _ = jax.lax.fori_loop(0, hp.num_steps, body, (w0, opt.init(w0)))
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
  tmask = jnp.asarray(tm, jnp.float32)  # positions whose next token is a target token
  d = _train(module, params, jnp.asarray(ids), jnp.asarray(mask), tmask, path=path, hp=hp)
  return delta_lib.add_delta(params, {path: d}, {"method": "ft", "layers": layers})
