"""Files written next to a merged checkpoint: config.json and the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from jaxparams.io import SafetensorsWriter
from jaxparams.io.safetensors_writer import TOKENIZER_FILES
from jaxparams.merge.recipe import Recipe

__all__ = ["write_side_files"]

_EXTRA_FILES = ("chat_template.jinja",)


def write_side_files(writer: SafetensorsWriter, recipe: Recipe, folders, align, n_layers: int,
                     copy_tokenizer: bool) -> None:
  """config.json (layer count, vocab size, dtype updated) and tokenizer files."""
  refs = recipe.model_names()
  cfg_src = recipe.base_model or refs[0]
  if recipe.slices:
    cfg_src = recipe.slices[0].base_model or recipe.base_model or recipe.slices[0].sources[0].model
  cfg_path = Path(folders[cfg_src]) / "config.json"
  if Path(folders[cfg_src]).is_dir() and cfg_path.is_file():
    cfg = json.loads(cfg_path.read_text())
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
    tc = json.loads(tc_path.read_text()) if tc_path.is_file() else {}
    tc["chat_template"] = recipe.chat_template
    writer.write_json("tokenizer_config.json", tc)
