"""Files written next to a merged checkpoint: config.json and the tokenizer."""

from __future__ import annotations

from pathlib import Path

from jaxparams.io import SafetensorsWriter, read_json, read_model_config
from jaxparams.io.safetensors_writer import TOKENIZER_FILES
from jaxparams.merge.recipe import Recipe

__all__ = ["read_source_config", "write_side_files"]

_EXTRA_FILES = ("chat_template.jinja",)


_UNREAD = object()


def read_source_config(recipe: Recipe, folders) -> dict | None:
  """The ``config.json`` the output's is made from (the base model's), or ``None`` if absent.

  Called before merging, so an invalid file is reported before any work.

  Raises:
    ValueError: not UTF-8, not JSON, or not a JSON object (the file named).
  """
  refs = recipe.model_names()
  cfg_src = recipe.base_model or refs[0]
  if recipe.slices:
    cfg_src = recipe.slices[0].base_model or recipe.base_model or recipe.slices[0].sources[0].model
  cfg_path = Path(folders[cfg_src]) / "config.json"
  if not (Path(folders[cfg_src]).is_dir() and (cfg_path.exists() or cfg_path.is_symlink())):
    return None
  # Copied into the output: the strict reader (a symlink outside the model folder is refused).
  return read_model_config(folders[cfg_src], what=f"config.json of model {cfg_src!r}")


def write_side_files(writer: SafetensorsWriter, recipe: Recipe, folders, align, n_layers: int,
                     copy_tokenizer: bool, config: dict | None | object = _UNREAD) -> None:
  """config.json (layer count, vocab size, dtype updated) and tokenizer files.

  ``config``: the source config from :func:`read_source_config` (read here if not given).
  """
  refs = recipe.model_names()
  cfg = read_source_config(recipe, folders) if config is _UNREAD else config
  if cfg is not None:
    cfg = dict(cfg)
    if recipe.slices:
      for k in ("num_hidden_layers", "n_layer", "num_layers"):
        if k in cfg:
          cfg[k] = n_layers
    if align is not None and "vocab_size" in cfg:
      cfg["vocab_size"] = align.rows
    out_dt = recipe.out_dtype or recipe.dtype
    if out_dt:
      for k in ("torch_dtype", "dtype"):
        if k in cfg:
          cfg[k] = out_dt
    writer.write_json("config.json", cfg)
  if not copy_tokenizer:
    return
  tok_src = recipe.base_model or refs[0]
  if recipe.tokenizer_source not in (None, "base", "union"):
    tok_src = recipe.tokenizer_source
  folder = Path(folders[tok_src])
  if folder.is_dir():
    writer.copy_from(folder, TOKENIZER_FILES + _EXTRA_FILES)
  if align is not None and align.tokenizer is not None:
    align.tokenizer.save(str(writer.folder_tmp / "tokenizer.json"))
  if recipe.chat_template:
    tc_path = writer.folder_tmp / "tokenizer_config.json"
    tc = read_json(tc_path, what="tokenizer_config.json") if tc_path.is_file() else {}
    if not isinstance(tc, dict):
      raise ValueError(f"{tc_path}: tokenizer_config.json must be a JSON object")
    tc["chat_template"] = recipe.chat_template
    writer.write_json("tokenizer_config.json", tc)
