"""The trainer's config: every field with its default, and the check of a config against them.

Example:
  >>> c = default_config()
  >>> c.optim.name, c.model.name
  ('adamw', 'tokenformer')
  >>> c.optim.nme = 'sgd'
  >>> check_config(c)
  Traceback (most recent call last):
  ...
  jaxparams.train.config.ConfigError: unknown config field 'config.optim.nme'; valid fields of config.optim: b1, b2, end_lr_ratio, grad_clip, lr, name, warmup_steps, weight_decay
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from jaxparams.train import families
from jaxparams.train import growth as growth_lib
from jaxparams.train import wtacrs
from jaxparams.train import zo

__all__ = ["BACKWARDS", "ConfigError", "OPTIMIZERS", "check_config", "default_config"]

OPTIMIZERS = ("adamw", "mezo")
BACKWARDS = ("exact", "wtacrs")


class ConfigError(ValueError):
  """A config the trainer cannot run (the CLI prints it as one line and exits with code 2)."""


def default_config() -> ml_collections.ConfigDict:
  """All trainer fields with defaults; config files start from it and override.

  Fields: ``seed``, ``num_steps``, ``batch_size`` (global, sequences), ``seq_len``,
  ``eval_batch_size``, ``eval_every`` (0 = only at growth and the end), ``log_every``,
  ``checkpoint_every``, ``keep_checkpoints``, ``stop_at_step`` (0 = never: stop early as if
  pre-empted, for tests), ``plot``, ``distributed`` (``'auto'``/``'on'``/``'off'``),
  ``mesh.model`` (size of the ``'model'`` axis), ``data.{max_bytes, eval_percent, root, corpus}``
  (``corpus``: optional ``'module:function'`` returning a :class:`~jaxparams.train.data.Corpus`
  of token ids), ``optim.{name, lr, warmup_steps, end_lr_ratio, weight_decay, b1, b2,
  grad_clip}`` (``name``: ``'adamw'`` or ``'mezo'``), ``zo.{eps, n_samples}`` (MeZO),
  ``backward.{name, ratio, min_rows}`` (``'exact'`` or ``'wtacrs'``),
  ``snapshot.{every, nodes, fail_at, lose_node}`` (in-memory snapshots, 0 = off),
  ``pruning.{sparsity, begin_step, end_step, update_freq, power, distribution}`` (gradual
  magnitude pruning, 0 = off), ``init.gg_nu`` (0 = the model's own init; > 0 redraws every
  matrix from a generalized Gaussian of that shape with the same variance,
  :func:`jaxparams.prune.gg_reinit`),
  ``model.name`` plus the family's config fields, ``growth.{steps, hook, kwargs, opt_state}``.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_steps = 1000
  c.batch_size = 32
  c.seq_len = 128
  c.eval_batch_size = 32
  c.eval_every = 100
  c.log_every = 10
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.stop_at_step = 0
  c.plot = True
  c.distributed = "auto"
  c.mesh = ml_collections.ConfigDict(dict(model=1))
  c.data = ml_collections.ConfigDict(dict(max_bytes=4_000_000, eval_percent=5, root="",
                                          corpus=""))
  c.optim = ml_collections.ConfigDict(dict(name="adamw", lr=3e-3, warmup_steps=100,
                                           end_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95,
                                           grad_clip=1.0))
  c.zo = ml_collections.ConfigDict(dict(eps=1e-3, n_samples=1))
  c.backward = ml_collections.ConfigDict(dict(name="exact", ratio=0.3, min_rows=1))
  c.snapshot = ml_collections.ConfigDict(dict(every=0, nodes=4, fail_at=0, lose_node=1))
  c.pruning = ml_collections.ConfigDict(dict(sparsity=0.0, begin_step=0, end_step=0,
                                             update_freq=10, power=3.0,
                                             distribution="uniform"))
  c.init = ml_collections.ConfigDict(dict(gg_nu=0.0))
  c.model = ml_collections.ConfigDict(dict(name="tokenformer"))
  c.growth = ml_collections.ConfigDict(dict(steps=(), hook="", opt_state="pad"))
  c.growth.kwargs = ml_collections.ConfigDict()
  return c


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`ConfigError` (a ValueError) naming any field the trainer does not know.

  ``config.model`` and ``config.growth.kwargs`` are checked against the model family's config
  dataclass and the growth hook's arguments.
  """
  try:
    _check_config(config)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _check_config(config: ml_collections.ConfigDict) -> None:
  def walk(node: Any, ref: Any, prefix: str) -> None:
    for key in node.keys():
      path = f"{prefix}.{key}"
      if path in ("config.model", "config.growth.kwargs"):
        continue
      if key not in ref:
        raise ValueError(f"unknown config field {path!r}; valid fields of {prefix}: "
                         f"{', '.join(sorted(ref.keys()))}")
      if isinstance(ref[key], ml_collections.ConfigDict):
        if not isinstance(node[key], (ml_collections.ConfigDict, dict)):
          raise ValueError(f"config field {path!r} must be a ConfigDict, found {node[key]!r}")
        walk(node[key], ref[key], path)

  walk(config, default_config(), "config")
  fam = families.get_family(config.model.name)
  families.model_config_from(fam, config.model)
  if config.growth.steps:
    hook = growth_lib.get_hook(config.growth.hook, fam.name)
    growth_lib.check_kwargs(hook, config.growth.kwargs.to_dict())
    if config.growth.opt_state not in growth_lib.OPT_STATE_MODES:
      raise ValueError(f"unknown config.growth.opt_state {config.growth.opt_state!r}; valid: "
                       f"{', '.join(growth_lib.OPT_STATE_MODES)}")
  for name in ("num_steps", "batch_size", "seq_len", "eval_batch_size", "log_every",
               "checkpoint_every", "keep_checkpoints"):
    if int(config[name]) <= 0:
      raise ValueError(f"config.{name} must be positive, found {config[name]}")
  if config.optim.name not in OPTIMIZERS:
    raise ValueError(f"unknown config.optim.name {config.optim.name!r}; valid: "
                     f"{', '.join(OPTIMIZERS)}")
  if config.optim.name == "mezo":
    zo.ZOConfig(eps=float(config.zo.eps), n_samples=int(config.zo.n_samples))
  if config.backward.name not in BACKWARDS:
    raise ValueError(f"unknown config.backward.name {config.backward.name!r}; valid: "
                     f"{', '.join(BACKWARDS)}")
  if config.backward.name == "wtacrs":
    wtacrs.num_rows(1, float(config.backward.ratio))
    fields = {f.name for f in dataclasses.fields(fam.make)} if dataclasses.is_dataclass(
        fam.make) else set()
    if "dot" not in fields:
      raise ValueError(f"config.backward.name='wtacrs' needs a model with a dot= injection "
                       f"point; model family {fam.name!r} has none")
    if config.optim.name == "mezo":
      raise ValueError("config.backward.name='wtacrs' has no effect with optim.name='mezo' "
                       "(no backward pass)")
  prn = config.pruning
  if float(prn.sparsity):
    if not 0.0 < float(prn.sparsity) < 1.0:
      raise ValueError(f"config.pruning.sparsity must be in [0, 1), found {prn.sparsity}")
    if prn.distribution not in ("uniform", "erk"):
      raise ValueError(f"unknown config.pruning.distribution {prn.distribution!r}; valid: "
                       "uniform, erk")
    if int(prn.end_step) <= int(prn.begin_step) or int(prn.update_freq) < 1:
      raise ValueError(f"config.pruning needs end_step > begin_step and update_freq >= 1, found "
                       f"begin_step={prn.begin_step}, end_step={prn.end_step}, "
                       f"update_freq={prn.update_freq}")
    if config.growth.steps or config.optim.name == "mezo":
      raise ValueError("config.pruning cannot be combined with growth.steps or optim.name='mezo'")
  if float(config.init.gg_nu) < 0:
    raise ValueError(f"config.init.gg_nu must be >= 0 (0 = the model's own init), found "
                     f"{config.init.gg_nu}")
  snap = config.snapshot
  if int(snap.every) < 0 or int(snap.fail_at) < 0:
    raise ValueError(f"config.snapshot.every and fail_at must be >= 0, found {snap.every}, "
                     f"{snap.fail_at}")
  if int(snap.every):
    if int(snap.nodes) < 2 or not 0 <= int(snap.lose_node) < int(snap.nodes):
      raise ValueError(f"config.snapshot needs nodes >= 2 and 0 <= lose_node < nodes, found "
                       f"nodes={snap.nodes}, lose_node={snap.lose_node}")
  if int(snap.fail_at):
    if not int(snap.every) or int(snap.fail_at) < int(snap.every):
      raise ValueError(f"config.snapshot.fail_at={snap.fail_at} needs a snapshot before it "
                       f"(snapshot.every={snap.every})")
    if config.growth.steps:
      raise ValueError("config.snapshot.fail_at cannot be combined with growth.steps (the "
                       "snapshot would hold the pre-growth shapes)")
