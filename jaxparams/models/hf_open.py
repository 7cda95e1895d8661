"""The one opener of Hugging Face checkpoint folders: config checked, family, names, tokenizer.

Every reader of an HF folder (:func:`jaxparams.models.from_hf`, streaming quantization, LoRA
extraction, calibrated pruning, editing, the data-aware merges) opens it here, so the guards
are the same everywhere:

* :func:`open_hf`: the checkpoint (:func:`jaxparams.io.open_checkpoint`), its ``config.json``
  (a JSON object with a supported ``model_type``), checked against the tensor headers by
  :func:`jaxparams.models.config_check.check_hf_config` *before* anything is built from it
  (a hostile config cannot make anything grow); the family record, the stored tensor names by
  their normalised form, and :meth:`HFCheckpoint.model_config` (BERT's pooler and masked-LM
  head detected from the tensors present, as ``from_hf`` does).
* :func:`hf_tokenizer`: ``tokenizer.json`` of the folder, refused when it is a symlink leading
  outside the folder, larger than a limit, or not a valid tokenizer (one-line errors naming
  the file).

Example:
  >>> from pathlib import Path
  >>> import jaxparams
  >>> src = Path(jaxparams.__file__).parents[1] / 'tests/fixtures/llama_tiny'
  >>> with open_hf(src) as ck:
  ...   cfg = ck.model_config()
  ...   ck.model_type, cfg.num_hidden_layers, ck.by_norm['lm_head.weight']
  ('llama', 2, 'lm_head.weight')
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator

from jaxparams import io as jio
from jaxparams.models.config_check import check_hf_config
from jaxparams.models.families import FAMILIES, Family, family, model_types

__all__ = ["HFCheckpoint", "open_hf", "hf_tokenizer", "MAX_TOKENIZER_BYTES"]

#: Size limit of a ``tokenizer.json`` (the largest public ones are ~35 MB).
MAX_TOKENIZER_BYTES = jio.tokenizer_file.MAX_TOKENIZER_BYTES

_CONFIG_ERRORS = (TypeError, ValueError, KeyError, ZeroDivisionError, OverflowError)


@dataclasses.dataclass
class HFCheckpoint:
  """An opened HF checkpoint whose ``config.json`` passed :func:`check_hf_config`.

  Attributes:
    path: what was opened (a folder, a ``.safetensors`` file or an index).
    folder: the folder holding ``config.json``.
    reader: the open tensor reader (:func:`jaxparams.io.open_checkpoint`).
    cfg: ``config.json`` as a dict.
    where: ``config.json``'s path, for messages.
    family: the family record of ``model_type``.
    by_norm: normalised HF tensor name -> name in the files.
  """

  path: Path
  folder: Path
  reader: Any
  cfg: dict
  where: str
  family: Family
  by_norm: dict[str, str]

  @property
  def model_type(self) -> str:
    return self.cfg["model_type"]

  def model_config(self, *, detect: tuple[str, ...] = ("add_pooling_layer", "mlm_head"),
                   **overrides: Any) -> Any:
    """The family's config dataclass from ``config.json`` (+ ``overrides``).

    For BERT, the fields named in ``detect`` and not in ``overrides`` are set from the
    tensors present: ``add_pooling_layer`` (the pooler), ``mlm_head`` (the masked-LM head);
    a field left out of ``detect`` keeps the config class's default.

    Raises:
      ValueError: the config cannot build the family's config (naming ``config.json``).
    """
    if self.model_type == "bert":
      marks = {"add_pooling_layer": "pooler.dense.weight",
               "mlm_head": "cls.predictions.transform.dense.weight"}
      for field in detect:
        if field not in overrides:
          overrides[field] = marks[field] in self.by_norm
    try:
      return self.family.config_cls.from_hf_dict(self.cfg, **overrides)
    except _CONFIG_ERRORS as e:
      raise ValueError(f"{self.where}: invalid {self.model_type} config: {e}") from None

  def module(self, config: Any, *, dot: Callable | None = None) -> Any:
    """The family's Flax module for ``config``."""
    if dot is None:
      return self.family.module_cls(config)
    return self.family.module_cls(config, dot=dot)

  def shapes(self) -> dict[str, tuple[int, ...]]:
    """Stored tensor name -> shape (from the headers)."""
    return {n: tuple(self.reader.spec(n).shape) for n in self.reader.names()}


def _read_config(reader: Any, path: Path, folder: Path, purpose: str) -> Any:
  file = folder / "config.json"
  if not file.is_file() and not file.is_symlink():
    raise ValueError(f"{path}: no config.json next to the weights; {purpose} needs the HF config "
                     "to know the architecture (model_type).")
  del reader
  return jio.read_model_config(folder)


@contextlib.contextmanager
def open_hf(path: str | Path, *, purpose: str = "reading the checkpoint"
            ) -> Iterator[HFCheckpoint]:
  """Opens an HF checkpoint and checks its ``config.json`` against the tensor headers.

  Args:
    path: an HF folder (``config.json`` + safetensors or a sharded index), or a
      ``.safetensors`` file with ``config.json`` beside it.
    purpose: what the caller does, for messages (``'quantization'``).

  Yields:
    An :class:`HFCheckpoint` (its reader is closed on exit).

  Raises:
    ValueError: no ``config.json``; not a JSON object; unsupported ``model_type``; a field
      of the wrong type or size or contradicted by the headers (see
      :func:`jaxparams.models.config_check.check_hf_config`).
  """
  path = Path(path)
  folder = path if path.is_dir() else path.parent
  with jio.open_checkpoint(path) as reader:
    cfg = _read_config(reader, path, folder, purpose)
    where = str(folder / "config.json")
    if not isinstance(cfg, dict):
      kind = "null" if cfg is None else type(cfg).__name__
      raise ValueError(f"{where}: must be a JSON object, found {kind}")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
      raise ValueError(f"{where}: model_type {model_type!r:.60} is not supported; "
                       f"supported: {list(model_types())}")
    arch = family(model_type)
    by_norm = {arch.normalize(n): n for n in reader.names()}
    # The config against the headers first: nothing built from it may grow with a hostile one.
    check_hf_config(cfg, arch, {n: reader.spec(n).shape for n in reader.names()}, where)
    yield HFCheckpoint(path, folder, reader, cfg, where, arch, by_norm)


def hf_tokenizer(folder: str | Path, *, purpose: str = "the text cannot be tokenized",
                 max_bytes: int = MAX_TOKENIZER_BYTES, vocab_size: int | None = None) -> Any:
  """The ``tokenizers.Tokenizer`` of ``folder/tokenizer.json``, as stored (no padding set).

  Read by the one strict reader, :func:`jaxparams.io.load_tokenizer_file`.

  Args:
    folder: the model folder.
    purpose: why it is needed, for the message when it is missing.
    max_bytes: refuse a larger file.
    vocab_size: the model's embedding rows; a tokenizer with an id ``>= vocab_size`` is
      refused (default: ``vocab_size`` of the folder's ``config.json`` when there is one), so
      an out-of-vocabulary id never reaches a gather (where it becomes NaN, not an error).

  Raises:
    ValueError: no ``tokenizer.json``; a symlink leading outside ``folder``; too large; not a
      valid tokenizer; an id beyond ``vocab_size`` (the file named).

  Example:
    >>> import os, tempfile
    >>> hf_tokenizer(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    ValueError: ...: no tokenizer.json; the text cannot be tokenized
  """
  folder = Path(folder)
  file = folder / "tokenizer.json"
  if not file.exists() and not file.is_symlink():
    raise ValueError(f"{folder}: no tokenizer.json; {purpose}")
  if vocab_size is None and ((folder / "config.json").is_file()
                             or (folder / "config.json").is_symlink()):
    vocab_size = jio.read_model_config(folder).get("vocab_size")
  return jio.load_tokenizer_file(folder, vocab_size=vocab_size, max_bytes=max_bytes)
