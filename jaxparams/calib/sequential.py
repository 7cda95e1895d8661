"""The one sequential block driver: block ``i`` calibrated on the outputs of transformed block ``i-1``.

Every calibrated method that changes a model block by block (GPTQ, AWQ, decoupleQ, AutoRound,
OmniQuant; SparseGPT, Wanda) runs GPTQ's sequential procedure: the layer-input statistics of a
block are collected with the blocks before it already transformed (quantized, pruned), so each
block sees the errors of the ones before it. Two drivers, one procedure:

* :func:`run_groups` -- in memory: the whole model is in ``params``; each group of layers
  (:func:`block_groups`: one transformer block, in forward order) gets the
  :class:`~jaxparams.calib.stats.InputStats` of its layers collected on the current
  (partially transformed) model, and the area's ``step`` returns the model with that group
  transformed.
* :func:`run_block_chain` -- streaming: one block in memory at a time. The calibration
  batches are run once up to the first block (its call arguments are the "states"); then for
  each block its weights are read, the area's ``step`` transforms them (with
  :func:`block_stats` of the block's layers on the states), and the block is re-run with the
  transformed weights to give the next block's states. With ``fp_chain=True`` the outputs of
  the untransformed chain are carried along too (targets of block-wise learned methods).

The helpers (:func:`top_level_calls`, :func:`first_block_inputs`, :func:`block_apply`,
:func:`stack_calls`, :func:`pad_batches`) are flax method interception on the model code,
which is never duplicated.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxparams as jp, jaxparams.models
  >>> from jaxparams import tree as jtree
  >>> cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...     num_hidden_layers=2, num_attention_heads=2)
  >>> model = jp.models.Llama(cfg)
  >>> ids = jnp.ones((2, 8), jnp.int32)
  >>> params = model.init(jax.random.key(0), ids)['params']
  >>> order = jp.calib.linear_order(model, params, ids)
  >>> [g[0] for g in block_groups(order)][:2]
  ['layers_0/attn/q_proj/kernel', 'layers_1/attn/q_proj/kernel']
  >>> seen = []
  >>> def halve(group, stats):   # the area's transform of one group: here, halve the kernels
  ...   seen.append(len(stats))
  ...   flat = jtree.flatten(cur[0])
  ...   flat.update({p: flat[p] / 2 for p in group})
  ...   cur[0] = jtree.unflatten(flat, like=params)
  ...   return cur[0]
  >>> cur = [params]
  >>> out = run_groups(model, params, [ids], block_groups(order), halve)
  >>> seen
  [7, 7, 1]
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxparams import tree as jtree
from jaxparams.calib.capture import as_call, block_of, collect_stats, stats_runner
from jaxparams.calib.stats import InputStats

__all__ = ["block_groups", "run_groups", "run_block_chain", "BlockStep", "block_stats",
           "top_level_calls", "first_block_inputs", "block_apply", "stack_calls", "pad_batches",
           "nested", "BLOCK_NAME"]

#: Names of numbered transformer blocks among a model's top-level submodules.
BLOCK_NAME = re.compile(r"^(layers?|blocks?|h)[_.]?\d+$")


# ----------------------------------------------------------------------------- in memory
def block_groups(paths: Iterable[str]) -> list[list[str]]:
  """Consecutive kernel paths of one block (:func:`~jaxparams.calib.block_of`) form a group.

  Example:
    >>> block_groups(['layers_0/a/kernel', 'layers_0/b/kernel', 'layers_1/a/kernel', 'head/kernel'])
    [['layers_0/a/kernel', 'layers_0/b/kernel'], ['layers_1/a/kernel'], ['head/kernel']]
  """
  groups: list[list[str]] = []
  for p in paths:
    if groups and block_of(groups[-1][0]) == block_of(p):
      groups[-1].append(p)
    else:
      groups.append([p])
  return groups


def run_groups(module: nn.Module, params: Any, batches: Any, groups: Sequence[Sequence[str]],
               step: Callable[[list[str], dict[str, InputStats]], Any], *,
               sequential: bool = True, runner: Callable | None = None) -> Any:
  """Transforms ``groups`` of layers in order, each calibrated on the model transformed so far.

  Args:
    module: the flax module.
    params: its params before any group is transformed.
    batches: calibration batches (see :func:`jaxparams.calib.collect_stats`).
    groups: kernel paths per group, in forward order (e.g. :func:`block_groups`).
    step: ``step(group, stats) -> params``: transforms ``group`` given the input statistics of
      its layers (only layers the forward pass calls have them) and returns the params the
      next group's statistics are collected on (the model with this group transformed; for
      quantization the dequantized weights).
    sequential: collect each group's statistics on the model returned by the previous
      ``step``; ``False``: one pass on ``params`` gives every group's statistics.
    runner: a reusable :func:`~jaxparams.calib.stats_runner` (default: one per group).

  Returns:
    What the last ``step`` returned (``params`` when there is no group).
  """
  groups = [list(g) for g in groups]
  all_stats: dict[str, InputStats] = {}
  if not sequential:
    all_stats = collect_stats(module, params, batches, paths=[p for g in groups for p in g],
                              runner=runner)
  current = params
  for group in groups:
    if sequential:
      stats = collect_stats(module, current, batches, paths=group, runner=runner)
    else:
      stats = {p: all_stats[p] for p in group if p in all_stats}
    current = step(group, stats)
  return current


# ----------------------------------------------------------------------------- streaming
class _Stop(Exception):
  """Raised by the interceptor at the first block: carries its call arguments."""

  def __init__(self, args, kwargs):
    super().__init__("stop")
    self.args, self.kwargs = args, kwargs


def top_level_calls(module: nn.Module, abstract: Mapping[str, Any], batch: Any
                    ) -> tuple[list[str], dict[str, nn.Module]]:
  """Top-level submodules in call order, and an unbound copy of each block (abstract trace).

  Args:
    module: the model.
    abstract: its flat params (``jax.ShapeDtypeStruct`` leaves suffice: nothing is computed).
    batch: a calibration batch.
  """
  order: list[str] = []
  blocks: dict[str, nn.Module] = {}

  def interceptor(next_fun, a, kw, context):
    path = context.module.scope.path if context.module.scope is not None else ()
    if context.method_name == "__call__" and len(path) == 1:
      if path[0] not in order:
        order.append(path[0])
      if BLOCK_NAME.match(path[0]) and path[0] not in blocks:
        blocks[path[0]] = context.module.clone(parent=None)
    return next_fun(*a, **kw)

  a, kw = as_call(batch, 0)

  def f(p, a, kw):
    with nn.intercept_methods(interceptor):
      return module.apply({"params": p}, *a, **kw)

  jax.eval_shape(f, jtree.unflatten(dict(abstract)),
                 tuple(jnp.asarray(x) for x in a),
                 {k: jnp.asarray(v) for k, v in kw.items() if v is not None})
  return order, blocks


def first_block_inputs(module: nn.Module, first_block: str) -> Callable:
  """jit ``f(prefix_params, args, kwargs) -> (args, kwargs)`` of the first block's call."""

  def run(params, a, kw):
    def interceptor(next_fun, a_, kw_, context):
      path = context.module.scope.path if context.module.scope is not None else ()
      if context.method_name == "__call__" and tuple(path) == (first_block,):
        raise _Stop(a_, kw_)
      return next_fun(*a_, **kw_)

    try:
      with nn.intercept_methods(interceptor):
        module.apply({"params": params}, *a, **kw)
    except _Stop as s:
      return s.args, s.kwargs
    raise ValueError(f"the model never called its first block {first_block!r}")

  return jax.jit(run)


def nested(flat: Mapping[str, Any], prefix: str) -> Any:
  """The nested params of block ``prefix`` from full flat paths ``prefix/...``."""
  n = len(prefix) + 1
  return jtree.unflatten({p[n:]: v for p, v in flat.items()})


def block_apply(module: nn.Module) -> Callable:
  """jit ``f(params, args, kwargs)`` running one block."""
  return jax.jit(lambda p, a, kw: module.apply({"params": p}, *a, **kw))


def block_stats(module: nn.Module, name: str, flat: Mapping[str, jax.Array], want: list,
                states: list, masks: list) -> dict[str, InputStats]:
  """:class:`InputStats` of block ``name``'s layers ``want`` (full paths) over all states.

  Raises:
    ValueError: NaN/inf in a layer's inputs.
  """
  stats: dict[str, Any] = {}
  run = stats_runner(module, [p[len(name) + 1:] for p in want])
  params = nested(flat, name)
  for (args, kwargs), mk in zip(states, masks):
    got = run(params, args, kwargs, mk)
    for rel, s in got.items():
      full = f"{name}/{rel}"
      stats[full] = stats[full] + s if full in stats else s
  for p, s in stats.items():
    if not bool(jnp.all(jnp.isfinite(s.xtx))):
      raise ValueError(f"calibration inputs of {p!r} contain NaN/inf (X^T X not finite)")
  return stats


def pad_batches(batches: list) -> list:
  """Right-pads dict batches (``input_ids`` and same-shaped arrays) to one sequence length."""
  if not all(isinstance(b, Mapping) and "input_ids" in b for b in batches):
    return batches
  t = max(np.shape(b["input_ids"])[1] for b in batches)
  out = []
  for b in batches:
    shape = np.shape(b["input_ids"])
    out.append({k: (np.pad(np.asarray(v), ((0, 0), (0, t - shape[1])))
                    if v is not None and np.shape(v) == shape else v) for k, v in b.items()})
  return out


def stack_calls(trees: list) -> Any:
  """Concatenates per-batch call trees ``(args, kwargs)`` along the sample axis.

  A leaf whose leading axis is its batch's size (that of ``args[0]``, the hidden states) is
  per-sample and concatenated; a leaf with a leading 1 in a larger batch is broadcast and
  shared. With batches of one sample every leaf is concatenated (broadcasting still holds).
  """
  sizes = [t[0][0].shape[0] for t in trees]

  def cat(*xs):
    if all(x.shape[0] == b for x, b in zip(xs, sizes)):
      return jnp.concatenate(xs, axis=0)
    if all(x.shape[0] == 1 and x.shape == xs[0].shape for x in xs):
      return xs[0]
    raise ValueError(f"calibration batches disagree on a block input: shapes "
                     f"{[x.shape for x in xs]} for batch sizes {sizes}")
  return jax.tree.map(cat, *trees)


class BlockStep:
  """What :func:`run_block_chain` hands the area's ``step`` for one block.

  Attributes:
    name: the block's name (``'layers_3'``).
    module: an unbound copy of the block.
    paths: the block's full flat param paths, in model order.
    flat: ``{full path: weight}`` as read.
    states: the block's call arguments ``[(args, kwargs)]`` per batch, from the transformed
      blocks before it.
    masks: the attention mask per batch (or ``None``).
    fp_next: with ``fp_chain``: the untransformed chain's states after this block
      (``args[0]`` are the targets of block-wise learned methods), else ``None``.
    fp_states: with ``fp_chain``: the untransformed chain's states before this block.
  """

  def __init__(self, name, module, paths, flat, states, masks, fp_states, fp_next):
    self.name, self.module, self.paths, self.flat = name, module, paths, flat
    self.states, self.masks, self.fp_states, self.fp_next = states, masks, fp_states, fp_next

  def stats(self, flat: Mapping[str, jax.Array], want: list) -> dict[str, InputStats]:
    """:func:`block_stats` of ``want`` with the block's weights ``flat`` on its states."""
    return block_stats(self.module, self.name, flat, want, self.states, self.masks)


def run_block_chain(module: nn.Module, abstract: Mapping[str, Any],
                    read: Callable[[str], np.ndarray], batches: list,
                    step: Callable[[BlockStep], Mapping[str, jax.Array]], *,
                    fp_chain: bool = False,
                    on_blocks: Callable[[list[str], dict[str, nn.Module]], None] | None = None
                    ) -> list[str]:
  """Streams the model block by block; ``step`` transforms each block on its inputs.

  Args:
    module: the model.
    abstract: its flat params (shapes/dtypes; nothing is read but through ``read``).
    read: ``read(path) -> array`` of one flat param (e.g. from a checkpoint on disk).
    batches: calibration batches (one sequence length when ``fp_chain`` methods stack them:
      :func:`pad_batches`).
    step: ``step(block) -> {full path: weight}``: the block's weights the next block's inputs
      are computed with (transformed, e.g. dequantized); paths not returned keep ``block.flat``.
    fp_chain: also carry the untransformed chain (``block.fp_states``/``block.fp_next``).
    on_blocks: called once with the top-level call order and the blocks, before any is read.

  Returns:
    The names of the blocks, in order.

  Raises:
    ValueError: the model calls no numbered block; the first block is never called.
  """
  order, blocks = top_level_calls(module, abstract, batches[0])
  block_names = [n for n in order if n in blocks]
  if not block_names:
    raise ValueError("the model calls no numbered transformer block (layers_0, ...)")
  if on_blocks is not None:
    on_blocks(order, blocks)
  first = block_names[0]
  prefix_mods = order[:order.index(first)]
  prefix = {p: jnp.asarray(read(p)) for p in abstract if p.split("/", 1)[0] in prefix_mods}
  get_inputs = first_block_inputs(module, first)
  states, masks = [], []
  pparams = jtree.unflatten(prefix)
  for i, batch in enumerate(batches):
    a, kw = as_call(batch, i)
    args, kwargs = get_inputs(pparams, tuple(jnp.asarray(x) for x in a),
                              {k: jnp.asarray(v) for k, v in kw.items() if v is not None})
    states.append((args, kwargs))
    mk = kw.get("attention_mask")
    masks.append(None if mk is None else jnp.asarray(mk))
  del prefix, pparams
  fp_states = list(states) if fp_chain else None
  for name in block_names:
    block = blocks[name]
    paths = [p for p in abstract if p.split("/", 1)[0] == name]
    flat = {p: jnp.asarray(read(p)) for p in paths}
    apply = block_apply(block)
    fp_next = None
    if fp_states is not None:
      params = nested(flat, name)
      fp_next = [((apply(params, args, kwargs),) + tuple(args[1:]), kwargs)
                 for args, kwargs in fp_states]
    current = dict(flat)
    current.update(step(BlockStep(name, block, paths, flat, states, masks, fp_states, fp_next)))
    params = nested(current, name)
    states = [((apply(params, args, kwargs),) + tuple(args[1:]), kwargs)
              for args, kwargs in states]
    if fp_next is not None:
      fp_states = fp_next
    del flat, current, params
  return block_names
