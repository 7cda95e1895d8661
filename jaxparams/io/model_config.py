"""The one reader of a model folder's ``config.json`` (Hugging Face), strict like the tensor readers.

:func:`read_model_config` reads ``<folder>/config.json`` through :func:`jaxparams.io.read_json`
(size-bounded before reading, a symlink leading outside the folder refused, UTF-8, no
NaN/duplicate keys) and checks what every user of a config relies on before any allocation:
the top level is an object; ``model_type`` is a string; each known size field (vocabulary,
widths, layer and head counts, positions) is an integer in ``[1, limit]`` (null allowed where HF
allows it); token ids are non-negative integers (or lists of them). Family-specific checks
against the tensor headers follow in :func:`jaxparams.models.config_check.check_hf_config`.

Example:
  >>> import json, os, tempfile
  >>> d = tempfile.mkdtemp()
  >>> _ = open(os.path.join(d, 'config.json'), 'w').write('[1, 2]')
  >>> read_model_config(d)
  Traceback (most recent call last):
  ...
  ValueError: .../config.json: must be a JSON object, found list [1, 2]
  >>> _ = open(os.path.join(d, 'config.json'), 'w').write('{"hidden_size": "64"}')
  >>> read_model_config(d)
  Traceback (most recent call last):
  ...
  ValueError: .../config.json: field 'hidden_size' must be an integer in [1, 1048576], found string '64'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxparams.io import fields as F
from jaxparams.io.text_files import read_json

__all__ = ["read_model_config", "check_model_config", "SIZE_LIMITS", "MAX_CONFIG_BYTES"]

#: Size limit of ``config.json`` (real ones are a few KB).
MAX_CONFIG_BYTES = 4 * 2**20

#: Known integer fields and their upper bounds (far beyond any released model, far below what
#: would make a hostile config allocate without bound).
SIZE_LIMITS = {
    "vocab_size": 2**24, "hidden_size": 2**20, "intermediate_size": 2**22, "n_embd": 2**20,
    "num_hidden_layers": 2**14, "n_layer": 2**14, "num_layers": 2**14,
    "num_attention_heads": 2**14, "num_key_value_heads": 2**14, "n_head": 2**14,
    "head_dim": 2**16, "max_position_embeddings": 2**24, "n_positions": 2**24,
    "type_vocab_size": 2**16, "num_local_experts": 2**14, "num_experts_per_tok": 2**14,
    "sliding_window": 2**24, "moe_intermediate_size": 2**22,
}
_NULLABLE = {"head_dim", "num_key_value_heads", "sliding_window", "max_position_embeddings"}


def _token_ids(where: str, name: str, value: Any) -> None:
  if value is None:
    return
  for v in value if isinstance(value, list) else [value]:
    F.expect_int(where, name, v, lo=0)


def check_model_config(cfg: Any, where: str, what: str = "") -> dict[str, Any]:
  """Checks a parsed ``config.json`` (see the module docstring); returns it.

  Raises:
    ValueError: naming ``where``, the field, the expected and the found value.
  """
  cfg = F.expect_object(where, cfg, what)
  if "model_type" in cfg:
    F.expect_str(where, "model_type", cfg["model_type"], max_len=200)
  for name, hi in SIZE_LIMITS.items():
    if name in cfg and not (cfg[name] is None and name in _NULLABLE):
      F.expect_int(where, name, cfg[name], lo=1, hi=hi)
  for name, value in cfg.items():
    if name.endswith("_token_id"):
      _token_ids(where, name, value)
  for name in ("torch_dtype", "dtype"):
    if name in cfg:
      F.expect_str(where, name, cfg[name], optional=True, max_len=64)
  return cfg


def read_model_config(folder: str | Path, *, max_bytes: int = MAX_CONFIG_BYTES,
                      what: str = "config.json") -> dict[str, Any]:
  """Reads and checks ``folder/config.json``.

  Args:
    folder: the model folder (the file must really live inside it).
    max_bytes: size limit, checked before reading.
    what: how messages name the file (``"config.json of model 'a'"``).

  Raises:
    FileNotFoundError: no ``config.json``.
    ValueError: outside the folder, too large, not UTF-8/JSON, or a field check fails.
  """
  folder = Path(folder)
  file = folder / "config.json"
  if not file.exists() and not file.is_symlink():
    raise FileNotFoundError(f"{folder}: no config.json")
  return check_model_config(read_json(file, what=what, max_bytes=max_bytes, folder=folder),
                            str(file), "" if what == "config.json" else what)
