"""ROME, MEMIT and AlphaEdit on a Llama or a BERT masked LM (:mod:`.arch`): locate keys,
optimise targets, closed-form update.

Each returns ``(new_params, Delta)`` (:mod:`jaxparams.edit.delta`: export, re-apply, rollback).
The edited kernels are chosen with ``where=`` (any ``jp.tree`` selector) and must be MLP output
projections (``layers_{l}/mlp/down_proj/kernel``; a BERT's ``layers_{l}/mlp/output/kernel``); a
selector matching nothing is an error listing the editable kernels.
Keys/targets come from :mod:`.probe`/:mod:`.targets`; the updates from :mod:`.solve`.

Example (needs a trained model; see tests/edit):
  >>> RomeParams().target.v_lr, MemitParams().lambda_mode, AlphaEditParams().nullspace_mode
  (0.5, 'relative', 'energy')
  >>> MemitParams(lambda_mode='absolute', mom2_update_weight=15000.0).mom2_update_weight
  15000.0
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxparams import tree as jtree
from jaxparams.calib import stats as calib_stats
from jaxparams.edit import delta as delta_lib
from jaxparams.edit import probe, sites, solve
from jaxparams.edit import requests as req_lib
from jaxparams.edit import targets as tgt_lib

__all__ = ["RomeParams", "MemitParams", "AlphaEditParams", "AlphaEditState", "rome", "memit",
           "alphaedit", "edited_layers", "compute_keys", "alpha_state"]

# Scale-free defaults (benchmarks/edit_thresholds.py, results/edit_thresholds.md): chosen on
# one batch of 100 edits of the facts LM (d_ff 256); the same numbers for every model.
MEMIT_LAMBDA_REL = 0.03
ALPHA_ENERGY = 0.05
ALPHA_L2_REL = 0.1

_MEMIT_TARGET = tgt_lib.TargetParams(clamp_norm_factor=0.75, v_num_grad_steps=25)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RomeParams:
  """ROME (``hparams/ROME/*.json``): target optimisation, ``mom2_adjustment`` (use ``C^-1``)."""
  target: tgt_lib.TargetParams = tgt_lib.TargetParams()
  mom2_adjustment: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemitParams:
  """MEMIT (``hparams/MEMIT/*.json``): lambda, target params and ``fp64`` (solve in float64 as
  the reference; False: float32 for accelerators without it).

  ``mom2_update_weight`` is read in ``lambda_mode`` (:func:`jaxparams.edit.solve.memit_lambda`):
  ``'relative'`` (default): lambda = ``mom2_update_weight x`` the edit keys' mean
  ``k^T C^-1 k`` (a lone key keeps ``1 / (1 + w)`` of its residual, whatever the key width and
  the statistics sample); ``'absolute'``: the number itself (the reference's
  ``lambda_mode='absolute', mom2_update_weight=15000``).
  """
  target: tgt_lib.TargetParams = _MEMIT_TARGET
  lambda_mode: str = "relative"
  mom2_update_weight: float = MEMIT_LAMBDA_REL
  fp64: bool = True

  def __post_init__(self):
    solve.check_mode(self.lambda_mode, solve.LAMBDA_MODES, "MemitParams.lambda_mode")
    if not self.mom2_update_weight >= 0:
      raise ValueError(f"MemitParams.mom2_update_weight must be >= 0, found "
                       f"{self.mom2_update_weight}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlphaEditParams:
  """AlphaEdit (``hparams/AlphaEdit/gpt2-xl.json`` and ``EleutherAI_gpt-j-6B.json``: targets at
  ``v_lr=0.5``; ``Llama3-8B.json``'s ``v_lr=0.1`` is ``--set target.v_lr=0.1``); the reference
  solves in float32 (``fp64=False``).

  The target learning rate is an absolute step on the hidden state (Adam): at 0.1 the 25 steps
  cannot reach a target on the 512-wide facts LM (0.15 of a batch of 100 edited there, 0.90 at
  0.5; RESULTS "AlphaEdit's shortfall was its target learning rate").

  ``nullspace_threshold`` is read in ``nullspace_mode``
  (:func:`jaxparams.edit.solve.null_space_projector`): ``'energy'`` (default): the null space is
  the smallest eigen-directions of ``C0`` holding at most that fraction of its trace;
  ``'relative'``: eigenvalues below that fraction of the largest; ``'absolute'``: eigenvalues
  below the value (the reference's ``nullspace_mode='absolute', nullspace_threshold=2e-2``).
  ``L2`` is read in ``l2_mode`` (:func:`jaxparams.edit.solve.alphaedit_l2`): ``'relative'``
  (default, times the edit keys' mean ``||P k||^2``) or ``'absolute'`` (the reference's 10).
  """
  target: tgt_lib.TargetParams = tgt_lib.TargetParams(clamp_norm_factor=0.75,
                                                      v_num_grad_steps=25, v_lr=0.5)
  nullspace_mode: str = "energy"
  nullspace_threshold: float = ALPHA_ENERGY
  l2_mode: str = "relative"
  L2: float = ALPHA_L2_REL
  fp64: bool = False

  def __post_init__(self):
    solve.check_mode(self.nullspace_mode, solve.NULLSPACE_MODES, "AlphaEditParams.nullspace_mode")
    solve.check_mode(self.l2_mode, solve.LAMBDA_MODES, "AlphaEditParams.l2_mode")
    if not self.nullspace_threshold >= 0 or not self.L2 >= 0:
      raise ValueError(f"AlphaEditParams: nullspace_threshold and L2 must be >= 0, found "
                       f"{self.nullspace_threshold}, {self.L2}")
    if self.nullspace_mode != "absolute" and self.nullspace_threshold > 1:
      raise ValueError(f"AlphaEditParams: nullspace_threshold is a fraction in mode "
                       f"{self.nullspace_mode!r} (<= 1), found {self.nullspace_threshold}")


@dataclasses.dataclass
class AlphaEditState:
  """Per edited layer: the null-space projector ``P`` and the key cache ``C_p = sum K_p K_p^T``
  of the edits made so far (sequential editing)."""
  projectors: dict[int, jax.Array]
  cache: dict[int, jax.Array]


def edited_layers(params: Any, where: Any) -> list[int]:
  """Layers of the MLP output kernels selected by ``where`` (sorted); a selector matching no
  leaf raises ValueError listing the editable kernels."""
  try:
    paths = jtree.select(params, where)
  except ValueError as e:
    valid = [p for p in jtree.flatten(params) if sites.LAYER_RE.fullmatch(p)]
    raise ValueError(f"{e}; editable kernels (valid layers): {valid}") from None
  return sorted(probe.layer_of_path(p) for p in paths)


def _groups(templates: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
  if templates and isinstance(templates[0], str):
    return [list(templates)]
  return [list(g) for g in templates]


def compute_keys(module: Any, params: Any, tokenizer: Any, requests: Sequence[req_lib.EditRequest],
                 layer: int, templates: Sequence[Sequence[str]],
                 fact_token: str = "subject_last") -> jax.Array:
  """Keys at the subject's last token, averaged within each template group, then over groups
  (``compute_ks.py``); ``[n_requests, d_k]``."""
  groups = _groups(templates)
  flat = [t for g in groups for t in g]
  batch = tgt_lib.encode_batch(tokenizer, requests, flat, (), fact_token,
                               masked=sites.of(module).masked)
  n, m, t = batch.ids.shape
  out = probe.run(module, params, jnp.asarray(batch.ids.reshape(n * m, t)),
                  jnp.asarray(batch.mask.reshape(n * m, t)), keys=(layer,))
  k = jnp.take_along_axis(out.keys[layer], jnp.asarray(batch.lookup.reshape(-1))[:, None, None],
                          1)[:, 0].reshape(n, m, -1).astype(jnp.float32)
  means, s = [], 0
  for g in groups:
    means.append(k[:, s:s + len(g)].mean(1))
    s += len(g)
  return jnp.stack(means, 0).mean(0)


def _hidden_at_subject(module, params, tokenizer, requests, layer, fact_token) -> jax.Array:
  batch = tgt_lib.encode_batch(tokenizer, requests, ["{}"], (), fact_token,
                               masked=sites.of(module).masked)
  n, m, t = batch.ids.shape
  out = probe.run(module, params, jnp.asarray(batch.ids.reshape(n * m, t)),
                  jnp.asarray(batch.mask.reshape(n * m, t)), hidden=(layer,))
  return jnp.take_along_axis(out.hidden[layer],
                             jnp.asarray(batch.lookup.reshape(-1))[:, None, None],
                             1)[:, 0].astype(jnp.float32)


def _kernel(params, layer):
  return jtree.flatten(params)[probe.kernel_path(layer, params)]


def _bias(params, layer):
  """The edited layer's bias (0 without one): ROME's ``v*`` is the layer's output, so the
  kernel's target is ``v* - b``."""
  return jtree.flatten(params).get(sites.bias_path(layer, params), 0.0)


def rome(module: Any, params: Any, tokenizer: Any, request: req_lib.EditRequest, *,
         cov: jax.Array | dict[int, jax.Array], where: Any, templates: Sequence[str],
         hp: RomeParams = RomeParams()) -> tuple[Any, delta_lib.Delta]:
  """One ROME edit (layers of ``where`` edited in order, each with its own rank-one update).

  Args:
    module, params, tokenizer: The model.
    request: The edit.
    cov: ``C = E[k k^T]`` of the layer (or ``{layer: C}``).
    where: Selector of the edited kernel(s), e.g. ``'layers_1/mlp/down_proj/kernel'``.
    templates: Context templates (``["{}", "... <s> {}", ...]``).
    hp: :class:`RomeParams`.
  """
  request.check(tokenizer)
  layers = edited_layers(params, where)
  updates, info = {}, {}
  cur = params
  for layer in layers:
    c = cov[layer] if isinstance(cov, dict) else cov
    if not hp.mom2_adjustment:
      c = jnp.eye(c.shape[0], dtype=jnp.float32)
    ft = hp.target.fact_token
    k_avg = compute_keys(module, cur, tokenizer, [request], layer, [templates], ft)[0]
    batch = tgt_lib.encode_batch(tokenizer, [request], list(templates), hp.target.kl_prompts,
                                 ft, masked=sites.of(module).masked)
    tg = tgt_lib.optimize_targets(module, cur, batch, layer=layer, site="mlp", hp=hp.target)
    k_star = compute_keys(module, cur, tokenizer, [request], layer, [["{}"]], ft)[0]
    w = _kernel(cur, layer)
    d = solve.rome_delta(w, c, k_avg, k_star, tg["target"][0] - _bias(cur, layer))
    updates[probe.kernel_path(layer, params)] = d
    info[layer] = {"loss": float(tg["loss"][0]), "steps": int(tg["steps"][0])}
    cur, _ = delta_lib.add_delta(cur, {probe.kernel_path(layer, params): d})
  meta = {"method": "rome", "layers": layers, "requests": [dataclasses.asdict(request)],
          "info": info}
  return delta_lib.add_delta(params, updates, meta)


def _locate_then_edit(module, params, tokenizer, requests, where, templates, target_hp,
                      update_fn, method):
  for r in requests:
    r.check(tokenizer)
  layers = edited_layers(params, where)
  z_layer = layers[-1]
  flat_templates = [t for g in _groups(templates) for t in g]
  ft = target_hp.fact_token
  batch = tgt_lib.encode_batch(tokenizer, requests, flat_templates, target_hp.kl_prompts, ft,
                               masked=sites.of(module).masked)
  tg = tgt_lib.optimize_targets(module, params, batch, layer=z_layer, site="block", hp=target_hp)
  zs = tg["target"]  # [n, d]
  cur = params
  updates = {}
  for i, layer in enumerate(layers):
    ks = compute_keys(module, cur, tokenizer, requests, layer, templates, ft)  # [n, d_k]
    cur_z = _hidden_at_subject(module, cur, tokenizer, requests, z_layer, ft)
    resid = (zs - cur_z) / (len(layers) - i)
    d = update_fn(i, layer, ks.T, resid.T)
    path = probe.kernel_path(layer, params)
    updates[path] = d
    cur, _ = delta_lib.add_delta(cur, {path: d})
  meta = {"method": method, "layers": layers, "n_requests": len(requests),
          "target_loss": float(jnp.mean(tg["loss"]))}
  return delta_lib.add_delta(params, updates, meta), cur


def memit(module: Any, params: Any, tokenizer: Any, requests: Sequence[req_lib.EditRequest], *,
          cov: dict[int, jax.Array], where: Any, templates: Sequence[Sequence[str]],
          hp: MemitParams = MemitParams()) -> tuple[Any, delta_lib.Delta]:
  """MEMIT batch edit: targets ``z`` at the last edited layer, residual spread over the layers.

  ``cov[l]`` is ``E[k k^T]`` of layer ``l``; ``templates`` are template groups
  (``[["{}"], [generated...]]``).
  """
  def update(i, layer, k, r):
    with jax.enable_x64(hp.fp64):
      lam = solve.memit_lambda(k, cov[layer], hp.mom2_update_weight, hp.lambda_mode)
      used[layer] = float(lam)
      return solve.memit_delta(k, r, cov[layer], lam)
  used: dict[int, float] = {}
  (new, d), _ = _locate_then_edit(module, params, tokenizer, requests, where, templates,
                                  hp.target, update, "memit")
  d.meta["lambda"] = {str(l): v for l, v in used.items()}
  return new, d


def alpha_state(cov: dict[int, jax.Array], hp: AlphaEditParams = AlphaEditParams()
                ) -> AlphaEditState:
  """Initial AlphaEdit state: projectors from ``cov`` and empty key caches."""
  proj = {l: solve.null_space_projector(c, hp.nullspace_threshold, hp.nullspace_mode)
          for l, c in cov.items()}
  return AlphaEditState(proj, {l: jnp.zeros_like(p) for l, p in proj.items()})


def alphaedit(module: Any, params: Any, tokenizer: Any, requests: Sequence[req_lib.EditRequest],
              *, state: AlphaEditState, where: Any, templates: Sequence[Sequence[str]],
              hp: AlphaEditParams = AlphaEditParams()
              ) -> tuple[Any, delta_lib.Delta, AlphaEditState]:
  """AlphaEdit batch edit in the null space of the preserved keys; returns the updated state
  (key cache grown by this batch's keys, recomputed after the edit as the reference does)."""
  def update(i, layer, k, r):
    with jax.enable_x64(hp.fp64):
      l2 = solve.alphaedit_l2(k, state.projectors[layer], hp.L2, hp.l2_mode)
      used[layer] = float(l2)
      return solve.alphaedit_delta(k, r, state.projectors[layer], state.cache[layer], l2)
  used: dict[int, float] = {}
  (new, d), _ = _locate_then_edit(module, params, tokenizer, requests, where, templates,
                                  hp.target, update, "alphaedit")
  d.meta["L2"] = {str(l): v for l, v in used.items()}
  d.meta["nullspace_dim"] = {str(l): int(round(float(jnp.trace(state.projectors[l]))))
                             for l in d.meta["layers"]}
  cache = dict(state.cache)
  for layer in d.meta["layers"]:
    ks = compute_keys(module, new, tokenizer, requests, layer, templates, hp.target.fact_token)
    cache[layer] = cache[layer] + calib_stats.accumulate(None, ks).xtx   # K_p^T K_p
  return new, d, AlphaEditState(dict(state.projectors), cache)
