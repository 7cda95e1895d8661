"""The compiled pieces of a training run: model, optimizer, jitted step and eval, and growth.

:func:`build_model` builds (and memoises per model config, optimizer features, mesh and
sequence length, so repeated runs in one process reuse compilations) a :class:`BuiltModel`;
:func:`grow` applies a growth hook and rebuilds it, carrying the optimizer state over.

Example (compiles for a few seconds, so skipped in doctests; tests/train run it):
  >>> from jaxparams.scale.tokenformer import TokenFormerConfig  # doctest: +SKIP
  >>> from jaxparams.train.optim import OptimFeatures  # doctest: +SKIP
  >>> m = build_model('tokenformer', TokenFormerConfig(), OptimFeatures(grad_clip=1.0, b1=0.9,
  ...                 b2=0.95, weight_decay=0.1), make_mesh(1), 64)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxparams import prune
from jaxparams.train import families
from jaxparams.train import growth as growth_lib
from jaxparams.train import wtacrs
from jaxparams.train import zo
from jaxparams.train.mesh import count_params, host, make_mesh, put, shardings  # noqa: F401
from jaxparams.train.optim import OptimFeatures, make_optimizer, pruning_targets

__all__ = ["BuiltModel", "build_model", "grow"]


@dataclasses.dataclass
class BuiltModel:
  """Everything that changes when the model grows: config, module, shardings, jitted fns."""
  config: Any
  module: Any
  tx: optax.GradientTransformation
  param_shardings: Any
  opt_shardings: Any
  init_params: Any
  init_opt: Any
  train_step: Any
  eval_loss: Any


@functools.lru_cache(maxsize=16)
def build_model(family_name: str, model_config: Any, features: OptimFeatures, mesh: Mesh,
                seq_len: int) -> BuiltModel:
  """Builds (and memoises, so repeated runs in one process reuse compilations) the jitted fns.

  ``train_step(params, opt_state, batch, lr, key)``: ``key`` drives MeZO's perturbations and
  WTA-CRS's row sampling (unused by exact AdamW).
  """
  make = families.get_family(family_name).make
  module = make(model_config)
  tx = make_optimizer(features)
  dummy = jnp.zeros((1, seq_len), jnp.int32)
  init_fn = lambda k: module.init(k, dummy)["params"]
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  pruning = features.pruning
  if pruning is not None:  # masks live in the optimizer state (jaxparams.prune.wrap_optax)
    targets_fn, schedule = pruning_targets(pruning)
    targets = targets_fn(abstract)
    tx = prune.wrap_optax(tx, targets, schedule=schedule, fold=False)
  ps = shardings(mesh, abstract)
  os_ = shardings(mesh, jax.eval_shape(tx.init, abstract))
  batch_s = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())

  def loss_fn(params, batch, mod=module):
    logits = mod.apply({"params": params}, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch[:, 1:]).mean()

  def step(params, opt_state, batch, lr, key):
    if features.wtacrs is not None:
      mod = make(model_config, dot=wtacrs.make_dot(key, ratio=features.wtacrs.ratio,
                                                   min_rows=features.wtacrs.min_rows))
      loss, grads = jax.value_and_grad(functools.partial(loss_fn, mod=mod))(params, batch)
    else:
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), params, updates)
    if pruning is not None:
      params, opt_state = prune.post_update(params, opt_state, targets, schedule=schedule)
    return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  def zo_step(params, opt_state, batch, lr, key):
    cfg = zo.ZOConfig(eps=features.mezo.eps, n_samples=features.mezo.n_samples,
                      weight_decay=features.weight_decay)
    params, m = zo.mezo_step(loss_fn, params, key, batch, lr=lr, config=cfg)
    return params, {"count": opt_state["count"] + 1}, {"loss": m["loss"],
                                                      "grad_norm": m["projected_grad"]}

  if features.mezo is not None:
    step = zo_step  # noqa: F811

  train_step = jax.jit(step, in_shardings=(ps, os_, batch_s, repl, repl),
                       out_shardings=(ps, os_, repl), donate_argnums=(0, 1))
  eval_loss = jax.jit(loss_fn, in_shardings=(ps, batch_s), out_shardings=repl)
  init_params = jax.jit(init_fn, out_shardings=ps)
  init_opt = jax.jit(tx.init, in_shardings=(ps,), out_shardings=os_)
  return BuiltModel(model_config, module, tx, ps, os_, init_params, init_opt, train_step, eval_loss)


def grow(hook: growth_lib.GrowthHook, model: BuiltModel, params: Any, opt_state: Any,
          eval_batch: jax.Array, build: Callable[[Any], BuiltModel], *, key: jax.Array,
          kwargs: dict[str, Any], opt_mode: str) -> tuple[BuiltModel, Any, Any, dict[str, Any]]:
  """Applies a growth hook; returns the rebuilt model, params, opt state and the JSONL record."""
  loss_before = float(model.eval_loss(params, eval_batch))
  n_before = count_params(params)
  new_params, new_config = growth_lib.apply_hook(hook, host(params), model.config, key, kwargs)
  mode = opt_mode if hook.keeps_paths else "reinit"
  new_model = build(new_config)
  params = put(new_params, new_model.param_shardings)
  fresh = jax.device_get(new_model.init_opt(params))
  new_opt = growth_lib.transfer_opt_state(host(opt_state), fresh, mode=mode)
  opt_state = put(new_opt, new_model.opt_shardings)
  loss_after = float(new_model.eval_loss(params, eval_batch))
  record = {"hook": hook.name, "loss_before": loss_before, "loss_after": loss_after,
            "abs_diff": abs(loss_after - loss_before), "opt_state": mode,
            "n_params_before": n_before, "n_params_after": count_params(params),
            "model_config": families.model_config_to_json(new_config)}
  return new_model, params, opt_state, record
