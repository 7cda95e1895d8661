"""The one reader of PEFT ``adapter_config.json`` (LoRA/DoRA), strict like the tensor readers.

:func:`read_adapter_config` reads ``<adapter folder>/adapter_config.json`` through
:func:`jaxparams.io.read_json` (size-bounded before reading, no symlink leading outside the adapter
folder, UTF-8, no NaN/duplicate keys) and checks every field of PEFT 0.21's ``LoraConfig`` with
:mod:`jaxparams.io.fields` (types and ranges; nothing coerced: ``r: 8.7`` or ``"8"`` is refused,
``use_rslora: "no"`` is refused, not read as true). The result is a frozen :class:`AdapterConfig`.

Unknown fields: PEFT 0.21 drops keys its ``LoraConfig`` does not know with a warning (its
forward-compatibility rule for configs saved by a newer PEFT). We refuse them instead, naming
the field (never its value): the fields added by recent PEFT releases (``use_bdlora``,
``kasa_config``, ``arrow_config``...) all change what the saved tensors mean, so ignoring one
would merge a different model than the adapter's. Fields PEFT knows but we do not implement are
accepted only at PEFT's default value.

Example:
  >>> import json, os, tempfile
  >>> d = tempfile.mkdtemp()
  >>> _ = open(os.path.join(d, 'adapter_config.json'), 'w').write(json.dumps(
  ...     {'peft_type': 'LORA', 'r': 8, 'lora_alpha': 16, 'use_rslora': True,
  ...      'target_modules': ['q_proj']}))
  >>> c = read_adapter_config(d)
  >>> c.r, c.lora_alpha, c.use_rslora, c.target_modules
  (8, 16, True, ('q_proj',))
  >>> _ = open(os.path.join(d, 'adapter_config.json'), 'w').write('{"r": 8.7}')
  >>> read_adapter_config(d)
  Traceback (most recent call last):
  ...
  ValueError: .../adapter_config.json: field 'r' must be an integer in [1, 65536], found number 8.7
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from jaxparams.io import fields as F
from jaxparams.io.text_files import read_json

__all__ = ["AdapterConfig", "read_adapter_config", "check_adapter_config", "ADAPTER_CONFIG_NAME",
           "MAX_ADAPTER_CONFIG_BYTES", "MAX_RANK"]

ADAPTER_CONFIG_NAME = "adapter_config.json"
#: Size limit of ``adapter_config.json`` (real ones are a few KB; patterns may list every module).
MAX_ADAPTER_CONFIG_BYTES = 16 * 2**20
#: Largest accepted LoRA rank.
MAX_RANK = 65536

# PEFT 0.21 fields that do not change what the saved tensors mean (metadata, injection-time).
_METADATA = {
    "task_type": lambda w, n, v: F.expect_str(w, n, v, optional=True),
    "base_model_name_or_path": lambda w, n, v: F.expect_str(w, n, v, optional=True),
    "revision": lambda w, n, v: F.expect_str(w, n, v, optional=True),
    "peft_version": lambda w, n, v: F.expect_str(w, n, v, optional=True),
    "megatron_core": lambda w, n, v: F.expect_str(w, n, v, optional=True),
    "inference_mode": F.expect_bool,
    "ensure_weight_tying": F.expect_bool,
    "lora_dropout": lambda w, n, v: F.expect_number(w, n, v, lo=0, hi=1),
    "auto_mapping": lambda w, n, v: None if v is None else F.expect_object(w, v, repr(n)),
    "runtime_config": lambda w, n, v: None if v is None else F.expect_object(w, v, repr(n)),
    "exclude_modules": lambda w, n, v: (v if isinstance(v, str) else
                                        F.expect_str_list(w, n, v)),
    "layers_pattern": lambda w, n, v: (v if isinstance(v, str) else F.expect_str_list(w, n, v)),
    "layers_to_transform": lambda w, n, v: (
        v if v is None or (isinstance(v, int) and not isinstance(v, bool)) else
        [F.expect_int(w, n, x, lo=0) for x in (v if isinstance(v, list) else [v])]),
}
# PEFT 0.21 fields supported only at these (PEFT default) values.
_DEFAULT_ONLY = {"megatron_config": (None,), "trainable_token_indices": (None,),
                 "loftq_config": ({}, None), "eva_config": (None,), "corda_config": (None,),
                 "lora_ga_config": (None,), "velora_config": (None,),
                 "alora_invocation_tokens": (None,), "use_qalora": (False,),
                 "qalora_group_size": (16, None), "monteclora_config": (None,),
                 "layer_replication": (None,), "target_parameters": (None, []),
                 "use_bdlora": (None, False), "arrow_config": (None,), "kasa_config": (None,)}
_READ = {"peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "rank_pattern",
         "alpha_pattern", "fan_in_fan_out", "bias", "lora_bias", "modules_to_save",
         "init_lora_weights", "target_modules"}
KNOWN_FIELDS = frozenset(_READ | set(_METADATA) | set(_DEFAULT_ONLY))


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdapterConfig:
  """A checked PEFT LoRA ``adapter_config.json``.

  Attributes:
    where: the file, for messages.
    r, lora_alpha, use_rslora, use_dora, rank_pattern, alpha_pattern, bias, lora_bias,
      init_lora_weights, fan_in_fan_out: PEFT's meaning (defaults: PEFT 0.21's).
    target_modules: a regex (PEFT: full match of the module name), a tuple of names (PEFT:
      the module name equals one or ends with ``'.' + name``), or ``None``.
    modules_to_save: module names whose full tensors the adapter replaces.
    raw: the JSON object as read (read-only), e.g. to write it back.
  """
  where: str
  r: int = 8
  lora_alpha: float = 8
  use_rslora: bool = False
  use_dora: bool = False
  rank_pattern: Mapping[str, int] = dataclasses.field(default_factory=dict)
  alpha_pattern: Mapping[str, float] = dataclasses.field(default_factory=dict)
  target_modules: str | tuple[str, ...] | None = None
  modules_to_save: tuple[str, ...] = ()
  bias: str = "none"
  lora_bias: bool = False
  init_lora_weights: bool | str = True
  fan_in_fan_out: bool = False
  raw: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def targets(self, module: str) -> bool:
    """Whether ``target_modules`` names ``module`` (PEFT's ``check_target_module_exists``;
    ``None`` and ``'all-linear'`` name every module)."""
    import re  # pylint: disable=import-outside-toplevel
    t = self.target_modules
    if t is None or t == "all-linear":
      return True
    if isinstance(t, str):
      return re.fullmatch(t, module) is not None
    return any(module == k or module.endswith("." + k) for k in t)


def check_adapter_config(cfg: Any, where: str) -> AdapterConfig:
  """Checks a parsed ``adapter_config.json`` (or a dict about to be written) field by field.

  Raises:
    ValueError: naming ``where`` and the field: not an object; a field of the wrong type or out
      of range; an unknown field (named, its value never shown); a PEFT feature we do not
      implement at a non-default value.
  """
  cfg = F.expect_object(where, cfg, "adapter config")
  unknown = sorted(k for k in cfg if k not in KNOWN_FIELDS)
  if unknown:
    raise ValueError(f"{where}: unknown adapter_config field(s) "
                     f"{[k[:60] for k in unknown[:5]]}; known fields (PEFT 0.21 LoraConfig): "
                     f"{sorted(KNOWN_FIELDS)}")
  F.expect_str(where, "peft_type", cfg.get("peft_type", "LORA"), choices=("LORA",))
  for k, check in _METADATA.items():
    if k in cfg:
      check(where, k, cfg[k])
  for k, allowed in _DEFAULT_ONLY.items():
    if k in cfg and not any(cfg[k] == a and type(cfg[k]) is type(a) for a in allowed):
      raise ValueError(f"{where}: adapter_config field {k!r} is not supported except at its "
                       f"default {allowed[0]!r}; the tensors would be misread")
  r = F.expect_int(where, "r", cfg.get("r", 8), lo=1, hi=MAX_RANK)
  alpha = F.expect_number(where, "lora_alpha", cfg.get("lora_alpha", 8))
  flags = {k: F.expect_bool(where, k, cfg.get(k, False))
           for k in ("use_rslora", "use_dora", "lora_bias", "fan_in_fan_out")}

  def rank(w, n, v):
    return F.expect_int(w, n, v, lo=1, hi=MAX_RANK)

  pats = {}
  for name, check in (("rank_pattern", rank), ("alpha_pattern", F.expect_number)):
    pats[name] = F.expect_mapping(where, name, cfg.get(name), check)
    for key in pats[name]:
      F.expect_regex(where, f"{name} key", key)
  tm = cfg.get("target_modules")
  if isinstance(tm, str):
    target = F.expect_regex(where, "target_modules", tm)
  else:
    target = F.expect_str_list(where, "target_modules", tm)
  mts = F.expect_str_list(where, "modules_to_save", cfg.get("modules_to_save")) or ()
  bias = F.expect_str(where, "bias", cfg.get("bias", "none"), choices=("none", "all",
                                                                      "lora_only"))
  init = cfg.get("init_lora_weights", True)
  if not (isinstance(init, bool) or init == "gaussian"):
    raise ValueError(f"{where}: field 'init_lora_weights' must be true, false or 'gaussian', "
                     f"found {F.describe(init)}: other inits change the base weights, so the "
                     "adapter is not a plain LoRA on them")
  return AdapterConfig(where=where, r=r, lora_alpha=alpha, **flags,
                       rank_pattern=MappingProxyType(pats["rank_pattern"]),
                       alpha_pattern=MappingProxyType(pats["alpha_pattern"]),
                       target_modules=target, modules_to_save=mts, bias=bias,
                       init_lora_weights=init, raw=MappingProxyType(dict(cfg)))


def read_adapter_config(folder: str | Path, *,
                        max_bytes: int = MAX_ADAPTER_CONFIG_BYTES) -> AdapterConfig:
  """Reads and checks ``folder/adapter_config.json`` (see the module docstring).

  Raises:
    FileNotFoundError: no ``adapter_config.json``.
    ValueError: outside the folder, too large, not UTF-8/JSON, or a field check fails (the file
      and field named).
  """
  folder = Path(folder)
  file = folder / ADAPTER_CONFIG_NAME
  if not file.exists() and not file.is_symlink():
    raise FileNotFoundError(f"{folder}: no {ADAPTER_CONFIG_NAME}; expected a PEFT adapter folder")
  cfg = read_json(file, what=ADAPTER_CONFIG_NAME, max_bytes=max_bytes, folder=folder)
  return check_adapter_config(cfg, str(file))
