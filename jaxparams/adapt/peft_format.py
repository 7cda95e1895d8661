"""The PEFT adapter folder format (``adapter_config.json`` + ``adapter_model.safetensors``).

On disk (PEFT 0.21 layout) each adapted module ``M`` (an HF module name such as
``model.layers.0.self_attn.q_proj``) has ``base_model.model.M.lora_A.weight [r, in]`` and
``...lora_B.weight [out, r]`` (embeddings: ``lora_embedding_A [r, vocab]``,
``lora_embedding_B [dim, r]``), optionally ``...lora_B.bias [out]`` (``lora_bias``) and
``...lora_magnitude_vector [out]`` (DoRA); ``modules_to_save`` are full tensors under
``base_model.model.<tensor name>``. Each module's scaling is ``alpha / r`` (rsLoRA:
``alpha / sqrt(r)``) with ``r`` and ``alpha`` from ``rank_pattern`` / ``alpha_pattern`` (PEFT's
rule: key ``k`` matches module ``M`` when ``re.match(rf'(.*\\.)?({k})$', M)``; first key wins).

:class:`PeftAdapter` holds that content with HF module names (what the streaming ``lora merge``
uses); :mod:`jaxparams.adapt.peft_tree` converts it to and from the adapter trees of
:mod:`jaxparams.adapt.tree_api` for a :mod:`jaxparams.models` config.

``bias='all'`` / ``'lora_only'`` adapters carry trained biases: they are read as replacement
tensors (like ``modules_to_save``). ``adapter_config.json`` is read by the strict
:func:`jaxparams.io.read_adapter_config` (types, ranges, the file inside the adapter folder);
fields that change what the tensors mean and that are not supported (PiSSA/OLoRA/LoftQ/EVA/CorDA
inits, QALoRA, ...) raise ``ValueError`` naming the field, and so do unknown fields: nothing is
silently ignored. Every adapter tensor must be floating-point, every LoRA module named by
``target_modules``, ``lora_embedding_A/B`` only on embedding modules, and an adapter must hold
at least one tensor.
``fan_in_fan_out`` is accepted and has no effect: our models' layers are ``nn.Linear`` for which
PEFT itself resets it to False. Pickle adapters (``adapter_model.bin``) are refused.

Example:
  >>> import numpy as np, tempfile, os
  >>> ad = PeftAdapter(modules={'model.layers.0.mlp.up_proj': dict(
  ...     A=np.ones((2, 4), np.float32), B=np.zeros((8, 2), np.float32), scale=2.0)})
  >>> out = os.path.join(tempfile.mkdtemp(), 'adapter')
  >>> write_peft(ad, out)
  >>> back = read_peft(out)
  >>> back.config['r'], back.config['lora_alpha'], back.modules['model.layers.0.mlp.up_proj']['scale']
  (2, 4.0, 2.0)
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from jaxparams import io as jio
from jaxparams.adapt import lora as L

__all__ = ["PeftAdapter", "read_peft", "write_peft", "make_config", "pattern_value", "PREFIX",
           "CONFIG_NAME", "WEIGHTS_NAME"]

PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

@dataclasses.dataclass
class PeftAdapter:
  """A PEFT LoRA adapter with HF module names (torch orientation).

  Attributes:
    modules: ``{module_name: {'A': [r, in], 'B': [out, r], 'scale': float, optional
      'magnitude': [out], 'bias': [out], 'embedding': True}}`` (for embeddings ``A`` is
      ``lora_embedding_A [r, vocab]`` and ``B`` is ``lora_embedding_B [dim, r]``).
    modules_to_save: ``{hf_tensor_name: array}`` full replacement tensors (``modules_to_save``,
      PEFT's saved embedding tables, and the trained biases of ``bias='all'/'lora_only'``).
    config: the ``adapter_config.json`` dict (filled by :func:`write_peft` when empty).
    stored_keys: for tensors read from a file, ``{modules_to_save name: key in the file}``
      (PEFT stores ``save_embedding_layers`` tables as ``<module>.base_layer.weight``).
  """
  modules: dict[str, dict[str, Any]]
  modules_to_save: dict[str, Any] = dataclasses.field(default_factory=dict)
  config: dict[str, Any] = dataclasses.field(default_factory=dict)
  stored_keys: dict[str, str] = dataclasses.field(default_factory=dict)

  def stored_key(self, tensor: str) -> str:
    """The key under which a ``modules_to_save`` tensor is stored in the adapter file."""
    return self.stored_keys.get(tensor, PREFIX + tensor)

  def delta_hf(self, module: str) -> np.ndarray:
    """``scale * B @ A`` in the HF weight's orientation (``[out, in]``; embeddings ``[vocab, dim]``)."""
    m = self.modules[module]
    d = np.asarray(L.delta(jnp.asarray(m["B"]), jnp.asarray(m["A"]), m["scale"]))
    return d.T if m.get("embedding") else d


def pattern_value(patterns: Mapping[str, Any] | None, module: str, default: Any) -> Any:
  """PEFT's ``get_pattern_key``: the value of the first key ``k`` with ``(.*\\.)?(k)$`` matching.

  Example:
    >>> pattern_value({'q_proj': 4}, 'model.layers.0.self_attn.q_proj', 8)
    4
    >>> pattern_value({'q_proj': 4}, 'model.layers.0.self_attn.k_proj', 8)
    8
  """
  for key, value in (patterns or {}).items():
    if re.match(rf"(.*\.)?({key})$", module):
      return value
  return default


def _check_config(cfg: Mapping[str, Any], where: str) -> jio.AdapterConfig:
  return jio.check_adapter_config(cfg, where)


# Module names PEFT wraps as ``nn.Embedding`` in the HF families (its LoRA tensors are then
# ``lora_embedding_A/B``; a Linear's are ``lora_A/B``).
_EMBEDDING_NAMES = ("embed_tokens", "word_embeddings", "wte", "wpe", "position_embeddings",
                    "token_type_embeddings", "embed_positions", "tok_embeddings", "shared",
                    "embeddings", "embed_in")


def is_embedding_module(module: str) -> bool:
  """Whether an HF module name is an embedding table (PEFT's ``Embedding`` LoRA layer).

  Example:
    >>> is_embedding_module('model.embed_tokens'), is_embedding_module('model.layers.0.self_attn.q_proj')
    (True, False)
  """
  return module.rsplit(".", 1)[-1] in _EMBEDDING_NAMES


_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_B.bias": "bias",
             ".lora_embedding_A": "A", ".lora_embedding_B": "B",
             ".lora_magnitude_vector": "magnitude", ".lora_magnitude_vector.weight": "magnitude"}


def read_peft(path: str | Path) -> PeftAdapter:
  """Reads a PEFT LoRA/DoRA adapter folder (safetensors only).

  Raises:
    FileNotFoundError: no ``adapter_config.json`` or no ``adapter_model.safetensors``.
    ValueError: a pickle ``adapter_model.bin``; an unsupported config field; a tensor whose
      shape disagrees with the config's rank; an unexpected key.
  """
  path = Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no such adapter folder")
  ac = jio.read_adapter_config(path)  # strict: types, ranges, inside the folder, size-bounded
  cfg, cfg_file = dict(ac.raw), ac.where
  weights = path / WEIGHTS_NAME
  if not weights.is_file() and not weights.is_symlink():
    for name in ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth"):
      if (path / name).exists():
        jio.refuse_pickle(path / name)
    raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME}")
  jio.resolve_inside(path, WEIGHTS_NAME, where=str(path), what="adapter weights")
  modules: dict[str, dict[str, Any]] = collections.defaultdict(dict)
  mts: dict[str, Any] = {}
  stored: dict[str, str] = {}
  mts_names = ac.modules_to_save
  with jio.open_checkpoint(weights) as reader:
    names = list(reader.names())
    if not names:
      raise ValueError(f"{weights}: the adapter holds no tensors; nothing to merge")
    for key in names:
      if not key.startswith(PREFIX):
        raise ValueError(f"{weights}: tensor {key!r} does not start with {PREFIX!r}")
      dt = np.dtype(reader.spec(key).dtype)
      if dt.kind in "iubcOSU":  # bfloat16/float8 are kind 'V' (ml_dtypes) and accepted
        raise ValueError(f"{weights}: tensor {key!r} has dtype {dt.name}; adapter tensors must "
                         "be floating-point")
      name = key[len(PREFIX):]
      for suf, field in _SUFFIXES.items():
        if name.endswith(suf):
          mod = name[:-len(suf)]
          modules[mod][field] = np.asarray(reader.read(key))
          if "embedding" in suf:
            modules[mod]["embedding"] = True
          break
      else:
        if ".base_layer." in name:  # PEFT's save_embedding_layers: the (base) table itself
          mts[name.replace(".base_layer.", ".")] = np.asarray(reader.read(key))
          stored[name.replace(".base_layer.", ".")] = key
          continue
        owner = name.rsplit(".", 1)[0]
        if name.endswith(".bias") and ac.bias != "none":
          mts[name] = np.asarray(reader.read(key))  # bias='all'/'lora_only': trained biases
        elif any(owner == m or owner.endswith("." + m) for m in mts_names):
          mts[name] = np.asarray(reader.read(key))
        else:
          raise ValueError(f"{weights}: tensor {key!r} is neither a LoRA tensor nor in "
                           f"modules_to_save {list(mts_names)}")
  out = {}
  for mod, m in modules.items():
    if "A" not in m or "B" not in m:
      raise ValueError(f"{weights}: module {mod!r} has {sorted(m)} but needs lora_A and lora_B")
    if not ac.targets(mod):
      raise ValueError(f"{weights}: module {mod!r} has LoRA tensors but {cfg_file}'s "
                       f"target_modules {ac.target_modules!r} does not name it (PEFT would not "
                       "load them)")
    if m.get("embedding") and not is_embedding_module(mod):
      raise ValueError(f"{weights}: module {mod!r} has lora_embedding_A/B but is not an "
                       "embedding (PEFT stores lora_A/lora_B for a Linear); refusing to merge "
                       "it with the embedding orientation")
    if m["A"].ndim != 2 or m["B"].ndim != 2:
      raise ValueError(f"{weights}: module {mod!r} has lora_A {m['A'].shape} and lora_B "
                       f"{m['B'].shape}; both must be 2-D")
    r = pattern_value(ac.rank_pattern, mod, ac.r)
    alpha = pattern_value(ac.alpha_pattern, mod, ac.lora_alpha)
    if m["A"].shape[0] != r or m["B"].shape[1] != r:
      raise ValueError(f"{weights}: module {mod!r} has lora_A {m['A'].shape} and lora_B "
                       f"{m['B'].shape} but the config gives rank {r}")
    if "magnitude" in m and not ac.use_dora:
      raise ValueError(f"{weights}: module {mod!r} has a DoRA magnitude but use_dora is false")
    if ac.use_dora and "magnitude" not in m:
      raise ValueError(f"{weights}: use_dora is true but module {mod!r} has no magnitude")
    if "bias" in m and not ac.lora_bias:
      raise ValueError(f"{weights}: module {mod!r} has lora_B.bias but lora_bias is false")
    m["scale"] = L.scaling(r, alpha, ac.use_rslora)
    out[mod] = dict(m)
  if not out and not mts:
    raise ValueError(f"{weights}: the adapter holds no LoRA module and no modules_to_save "
                     "tensor; nothing to merge")
  return PeftAdapter(modules=out, modules_to_save=mts, config=cfg, stored_keys=stored)


def _most_common(values):
  return collections.Counter(values).most_common(1)[0][0]


def make_config(ad: PeftAdapter, *, use_rslora: bool = False, target_modules: Any = None,
                **extra: Any) -> dict[str, Any]:
  """An ``adapter_config.json`` dict for ``ad``: r/alpha of the majority, patterns for the rest."""
  if not ad.modules:
    raise ValueError("an adapter needs at least one module")
  ranks = {m: int(e["A"].shape[0]) for m, e in ad.modules.items()}
  root = (lambda r: np.sqrt(r)) if use_rslora else (lambda r: r)
  alphas = {m: float(e["scale"]) * float(root(ranks[m])) for m, e in ad.modules.items()}
  r0 = _most_common(ranks.values())
  a0 = _most_common(alphas.values())
  dora = {("magnitude" in e) for e in ad.modules.values()}
  if len(dora) > 1:
    raise ValueError("PEFT needs DoRA on every module or on none; got a mix")
  bias = any("bias" in e for e in ad.modules.values())
  if target_modules is None:
    target_modules = sorted({m.rsplit(".", 1)[-1] for m in ad.modules})
  bias_mode = extra.get("bias", "none")
  mts = sorted({n.rsplit(".", 2)[-2] for n in ad.modules_to_save
                if not (bias_mode != "none" and n.endswith(".bias"))}) or None
  cfg = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": None,
         "r": r0, "lora_alpha": a0, "target_modules": target_modules,
         "rank_pattern": {m: r for m, r in ranks.items() if r != r0},
         "alpha_pattern": {m: a for m, a in alphas.items() if a != a0},
         "use_rslora": use_rslora, "use_dora": dora.pop(), "lora_bias": bias,
         "lora_dropout": 0.0, "fan_in_fan_out": False, "bias": "none",
         "modules_to_save": mts, "init_lora_weights": True, "inference_mode": True}
  cfg.update(extra)
  return cfg


def write_peft(ad: PeftAdapter, out_dir: str | Path, *, overwrite: bool = False,
               config: Mapping[str, Any] | None = None) -> None:
  """Writes a PEFT adapter folder atomically (config from ``config``, ``ad.config`` or derived)."""
  cfg = dict(config or ad.config or make_config(ad))
  _check_config(cfg, f"{out_dir}/{CONFIG_NAME}")
  tensors: dict[str, np.ndarray] = {}
  for mod, e in ad.modules.items():
    emb = bool(e.get("embedding"))
    ka, kb = (".lora_embedding_A", ".lora_embedding_B") if emb else (".lora_A.weight",
                                                                     ".lora_B.weight")
    tensors[PREFIX + mod + ka] = np.ascontiguousarray(np.asarray(e["A"]))
    tensors[PREFIX + mod + kb] = np.ascontiguousarray(np.asarray(e["B"]))
    if "magnitude" in e:
      tensors[PREFIX + mod + ".lora_magnitude_vector"] = np.asarray(e["magnitude"])
    if "bias" in e:
      tensors[PREFIX + mod + ".lora_B.bias"] = np.asarray(e["bias"])
  for name, arr in ad.modules_to_save.items():
    tensors[ad.stored_key(name)] = np.asarray(arr)
  with jio.atomic_dir(out_dir, overwrite=overwrite) as tmp:
    jio.write_safetensors_file(tmp / WEIGHTS_NAME, tensors, {"format": "pt"})
    (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
