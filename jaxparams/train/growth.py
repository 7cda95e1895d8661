"""Growth hooks for the trainer: grow the params mid-training and carry the optimizer state over.

A hook maps ``(params, model_config, key, **kwargs) -> (params, model_config)`` and wraps one
function-preserving transform of :mod:`jaxparams.scale` (the math lives there, not here):

==================== ============================================ =================
hook                 transform                                    moments
==================== ============================================ =================
``tokenformer_grow`` :func:`jaxparams.scale.tokenformer.grow`      ``pad``
``llama_widen_ffn``  :func:`jaxparams.scale.net2net.widen_llama_ffn`  ``pad``
``llama_widen_heads`` :func:`jaxparams.scale.net2net.widen_llama_heads` ``pad``
``llama_deepen``     :func:`jaxparams.scale.net2net.deepen_llama`   ``reinit`` only
==================== ============================================ =================

Optimizer state after growth (:func:`transfer_opt_state`) -- the choice, documented:

* ``'pad'`` (default): a fresh ``tx.init(new_params)`` is built, then every leaf whose path exists in
  the old state is copied over: same shape -> copied verbatim (step counts, unchanged params' Adam
  moments); grown shape -> the old values fill the leading ``old.shape`` block and the new slots
  keep the fresh value (zeros for Adam's ``mu``/``nu``). All three transforms above keep the old
  units/tokens as the leading slice of each grown axis (TokenFormer appends tokens; Net2WiderNet
  keeps unit ``j < n`` at ``j`` and appends the copies), so old moments stay attached to the
  parameters they were estimated for. New slots start with zero moments, i.e. they behave like the
  first Adam steps of a fresh parameter (bias correction uses the global count, so their first
  updates are up to a few times the learning rate in size -- cheap to accept, and it also breaks
  the symmetry between a Net2Net unit and its copy). The step count (and hence the learning-rate
  schedule) continues.
* ``'reinit'``: only the scalar leaves (step counts) are kept; all moments restart from zero. Used
  automatically for ``llama_deepen``, which renames layers (``layers_i`` shifts), so moments cannot
  be matched by path.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> tx = optax.adam(1e-3)
  >>> old = {'w': jnp.ones((2, 3))}
  >>> state = tx.update(old, tx.init(old), old)[1]
  >>> new = {'w': jnp.ones((4, 3))}
  >>> new_state = transfer_opt_state(state, tx.init(new), mode='pad')
  >>> new_state[0].mu['w'][:, 0].tolist()
  [0.10000000149011612, 0.10000000149011612, 0.0, 0.0]
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import numpy as np

__all__ = ["GrowthHook", "get_hook", "hook_names", "apply_hook", "transfer_opt_state",
           "OPT_STATE_MODES"]

OPT_STATE_MODES = ("pad", "reinit")


@dataclasses.dataclass(frozen=True)
class GrowthHook:
  """One growth transform usable from a config.

  Attributes:
    name: Name used in ``config.growth.hook``.
    family: Model family (``config.model.name``) it applies to.
    fn: ``fn(params, model_config, key, **kwargs) -> (params, model_config)``.
    kwargs: Names of the keyword arguments accepted from ``config.growth.kwargs``.
    required: Names among ``kwargs`` that must be given.
    keeps_paths: Whether every old param keeps its path (else moments can only be reinitialised).
  """
  name: str
  family: str
  fn: Callable[..., tuple[Any, Any]]
  kwargs: tuple[str, ...]
  required: tuple[str, ...]
  keeps_paths: bool = True


def _tokenformer_grow(params, config, key, *, n_new_tokens, value_init="normal", value_std=None):
  from jaxparams.scale import tokenformer  # pylint: disable=g-import-not-at-top
  if hasattr(n_new_tokens, "to_dict"):
    n_new_tokens = n_new_tokens.to_dict()
  return tokenformer.grow(params, config, n_new_tokens, key=key, value_init=value_init,
                          value_std=value_std)


def _llama_widen_ffn(params, config, key, *, new_intermediate_size, noise=0.0):
  from jaxparams.scale import net2net  # pylint: disable=g-import-not-at-top
  return net2net.widen_llama_ffn(params, config, int(new_intermediate_size), key, noise=noise)


def _llama_widen_heads(params, config, key, *, new_num_heads):
  from jaxparams.scale import net2net  # pylint: disable=g-import-not-at-top
  return net2net.widen_llama_heads(params, config, int(new_num_heads), key)


def _llama_deepen(params, config, key, *, positions, init="copy"):
  del key
  from jaxparams.scale import net2net  # pylint: disable=g-import-not-at-top
  positions = tuple(positions) if isinstance(positions, (list, tuple)) else int(positions)
  return net2net.deepen_llama(params, config, positions, init=init)


def _hooks() -> dict[str, GrowthHook]:
  def make(name, family, fn, keeps_paths=True):
    sig = inspect.signature(fn).parameters.values()
    kw = tuple(p.name for p in sig if p.kind is inspect.Parameter.KEYWORD_ONLY)
    req = tuple(p.name for p in sig if p.kind is inspect.Parameter.KEYWORD_ONLY
                and p.default is inspect.Parameter.empty)
    return GrowthHook(name, family, fn, kw, req, keeps_paths)
  hooks = [make("tokenformer_grow", "tokenformer", _tokenformer_grow),
           make("llama_widen_ffn", "llama", _llama_widen_ffn),
           make("llama_widen_heads", "llama", _llama_widen_heads),
           make("llama_deepen", "llama", _llama_deepen, keeps_paths=False)]
  return {h.name: h for h in hooks}


def hook_names() -> list[str]:
  """Names of the registered growth hooks."""
  return sorted(_hooks())


def get_hook(name: str, family: str | None = None) -> GrowthHook:
  """Looks up a growth hook by name.

  Raises:
    ValueError: unknown name (the message lists the valid ones) or a hook of another family.
  """
  hooks = _hooks()
  if name not in hooks:
    raise ValueError(f"unknown growth hook {name!r} (config.growth.hook); valid hooks: "
                     f"{', '.join(sorted(hooks))}")
  hook = hooks[name]
  if family is not None and hook.family != family:
    raise ValueError(f"growth hook {name!r} applies to model family {hook.family!r}, but "
                     f"config.model.name is {family!r}")
  return hook


def check_kwargs(hook: GrowthHook, kwargs: dict[str, Any]) -> None:
  """Raises ValueError naming unknown or missing ``config.growth.kwargs`` fields."""
  unknown = sorted(set(kwargs) - set(hook.kwargs))
  if unknown:
    raise ValueError(f"unknown field(s) {unknown} in config.growth.kwargs for hook {hook.name!r};"
                     f" valid fields: {list(hook.kwargs)}")
  missing = sorted(set(hook.required) - set(kwargs))
  if missing:
    raise ValueError(f"config.growth.kwargs is missing {missing} required by hook {hook.name!r}")


def apply_hook(hook: GrowthHook, params: Any, model_config: Any, key: jax.Array,
               kwargs: dict[str, Any]) -> tuple[Any, Any]:
  """Runs ``hook`` on host-gathered params; returns ``(new_params, new_model_config)``."""
  check_kwargs(hook, kwargs)
  return hook.fn(params, model_config, key, **kwargs)


def _keyed_leaves(tree: Any) -> dict[str, Any]:
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def transfer_opt_state(old_state: Any, fresh_state: Any, *, mode: str = "pad") -> Any:
  """Carries an optimizer state over to grown params (see module docstring for the policy).

  Args:
    old_state: Optimizer state of the params before growth.
    fresh_state: ``tx.init(new_params)``; gives the structure, shapes and new-slot values.
    mode: ``'pad'`` or ``'reinit'``.

  Returns:
    A state with the structure of ``fresh_state`` (grown leaves as host numpy arrays; place them
    with ``jax.device_put`` or the trainer's shardings).

  Raises:
    ValueError: unknown mode, or an old leaf that is larger than its new counterpart.
  """
  if mode not in OPT_STATE_MODES:
    raise ValueError(f"unknown optimizer-state growth mode {mode!r} (config.growth.opt_state); "
                     f"valid modes: {', '.join(OPT_STATE_MODES)}")
  old = _keyed_leaves(old_state)
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(fresh_state)
  out = []
  for path, new in paths_leaves:
    key = jax.tree_util.keystr(path)
    prev = old.get(key)
    if prev is None or np.ndim(prev) != np.ndim(new):
      out.append(new)
      continue
    if np.shape(prev) == np.shape(new):
      out.append(prev if (mode == "pad" or np.ndim(new) == 0) else new)
      continue
    if mode == "reinit":
      out.append(new)
      continue
    if any(a > b for a, b in zip(np.shape(prev), np.shape(new))):
      raise ValueError(f"optimizer state leaf {key}: old shape {np.shape(prev)} does not fit in "
                       f"the grown shape {np.shape(new)} (growth must not shrink a parameter)")
    index = tuple(slice(0, s) for s in np.shape(prev))
    grown = np.array(new, copy=True)  # host work: no per-shape compilation
    grown[index] = np.asarray(prev, dtype=grown.dtype)
    out.append(grown)
  return jax.tree_util.tree_unflatten(treedef, out)
