"""Align embedding / LM-head rows of models with different tokenizers.

``tokenizer_source: base | union | <model>`` in a recipe picks the output
vocabulary, as mergekit 0.1.5 does (``mergekit/tokenizer/build.py`` and
``embed.py``):

* ``base``: the base model's tokenizer (tokens with ids at or past its
  ``config.json`` ``vocab_size`` dropped); ``<model>``: that model's tokenizer;
* ``union``: the base tokenizer plus every other model's tokens it lacks,
  appended (ordinary tokens first, by each model's id order, then added/special
  tokens).

Every input's vocabulary-indexed tensor is then rebuilt in the output order
before the merge: a model keeps its own row for a token it has; for a token it
lacks, the row is the base model's (if the base has it), else the only donor's
(if one model has it), else the mean of the models that have it, else zeros.

Only ``tokenizer.json`` (HF fast tokenizers, read with the ``tokenizers``
package) is supported. mergekit's ``tokenizer: {source, pad_to_multiple_of}``
block is (padding rows get the mean embedding); its per-token ``tokens:``
overrides are not.

Example:
  >>> import numpy as np
  >>> a = VocabAlignment(vocab={'x': 0, 'y': 1, 'z': 2}, size=3,
  ...                    perms={'base': np.array([0, 1, -1]), 'ft': np.array([1, -1, 0])},
  ...                    tokenizer=None)
  >>> rows = a.align({'base': np.array([[1.], [2.]]), 'ft': np.array([[30.], [10.]])}, base='base')
  >>> rows['base'][:, 0].tolist(), rows['ft'][:, 0].tolist()
  ([1.0, 2.0, 30.0], [10.0, 2.0, 30.0])
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jaxparams import io as jio

__all__ = ["VocabAlignment", "build_alignment", "load_vocab"]


@dataclasses.dataclass(frozen=True)
class VocabAlignment:
  """The output vocabulary and, per model, the source row of each output token.

  Attributes:
    vocab: output token -> id.
    size: number of output rows.
    perms: model -> int array ``[size]``: that model's row for each output id,
      ``-1`` where it lacks the token.
    tokenizer: the output ``tokenizers.Tokenizer`` (``None`` when it is a
      model's own, copied as files).
  """
  vocab: Mapping[str, int]
  size: int
  perms: Mapping[str, np.ndarray]
  tokenizer: Any = None
  padded_size: int | None = None

  @property
  def rows(self) -> int:
    """Output rows: ``size``, or more with ``pad_to_multiple_of`` (extra rows = mean row)."""
    return self.padded_size or self.size

  def align(self, arrays: Mapping[str, np.ndarray], base: str | None) -> dict[str, np.ndarray]:
    """Rebuilds each model's rows (axis 0) in the output vocabulary.

    Args:
      arrays: model -> tensor ``[rows, ...]`` (that model's vocabulary order).
      base: the base model (its rows fill tokens others lack), or ``None``.

    Returns:
      model -> tensor ``[size, ...]`` in the promoted input dtype.
    """
    models = list(arrays)
    dtype = np.result_type(*[a.dtype for a in arrays.values()])
    tail = next(iter(arrays.values())).shape[1:]
    present, gathered = {}, {}
    for m in models:
      p = self.perms[m]
      a = arrays[m]
      ok = (p >= 0) & (p < a.shape[0])
      present[m] = ok
      gathered[m] = np.where(ok.reshape((-1,) + (1,) * len(tail)),
                             a[np.where(ok, p, 0)].astype(np.float32), np.float32(0))
    count = sum(present[m].astype(np.int64) for m in models)
    mean = sum(gathered.values()) / np.maximum(count, 1).reshape((-1,) + (1,) * len(tail))
    if base is not None and base in arrays:
      bmask = present[base].reshape((-1,) + (1,) * len(tail))
      default = np.where(bmask, gathered[base], mean)
    else:
      default = mean
    out = {}
    for m in models:
      own = present[m].reshape((-1,) + (1,) * len(tail))
      rows = np.where(own, gathered[m], default)
      if self.rows > self.size:  # padding rows: the mean embedding (as mergekit does)
        pad = np.broadcast_to(rows.mean(axis=0), (self.rows - self.size,) + tail)
        rows = np.concatenate([rows, pad])
      out[m] = rows.astype(dtype)
    return out


def load_vocab(folder: str | Path, vocab_size: int | None = None) -> tuple[dict[str, int], Any]:
  """A model's vocabulary (token -> id, ids below ``vocab_size``) and its tokenizer.

  Raises:
    ValueError: when the folder has no ``tokenizer.json``.
  """
  path = Path(folder) / "tokenizer.json"
  if not path.is_file() and not path.is_symlink():
    raise ValueError(f"{folder}: no tokenizer.json; tokenizer_source needs HF fast tokenizers "
                     "(tokenizer.json) for every model.")
  tok = jio.load_tokenizer_file(folder)
  vocab = tok.get_vocab(with_added_tokens=True)
  if vocab_size is not None:
    vocab = {t: i for t, i in vocab.items() if i < vocab_size}
  return vocab, tok


def _config_vocab_size(folder: Path) -> int | None:
  cfg = folder / "config.json"
  if cfg.is_file() or cfg.is_symlink():
    return jio.read_model_config(folder).get("vocab_size")
  return None


def build_alignment(source: str, folders: Mapping[str, Path], base: str | None,
                    pad_to_multiple_of: int | None = None) -> VocabAlignment:
  """Builds the output vocabulary and per-model row maps.

  Args:
    source: ``'base'``, ``'union'`` or one of ``folders``' keys.
    folders: model reference -> local folder (with ``tokenizer.json`` and
      ``config.json``), in recipe order.
    base: the base model reference (defaults to the first model).
    pad_to_multiple_of: round the row count up to a multiple of this.

  Example:
    >>> build_alignment  # doctest: +ELLIPSIS
    <function build_alignment at ...>
  """
  import tokenizers  # pylint: disable=import-outside-toplevel
  models = list(folders)
  base = base if base is not None else models[0]
  vocabs, toks = {}, {}
  for m in [base] + [x for x in models if x != base]:
    folder = Path(folders[m])
    try:
      vocabs[m], toks[m] = load_vocab(folder, _config_vocab_size(folder))
    except ValueError:
      if m == base:
        raise
      vocabs[m], toks[m] = vocabs[base], toks[base]  # mergekit: assume the base's tokenizer
  out_tok = None
  if source == "base":
    vocab_out = dict(vocabs[base])
  elif source == "union":
    out_tok = tokenizers.Tokenizer.from_str(toks[base].to_str())
    vocab_out = dict(vocabs[base])
    new_plain, new_added = {}, {}
    for m, vocab in vocabs.items():
      added = {i: t for i, t in toks[m].get_added_tokens_decoder().items()}
      added_contents = {t.content for t in added.values()}
      for tok, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        if tok in added_contents:
          if tok not in vocab_out and tok not in new_added:
            new_added[tok] = added[idx]
          continue
        if tok not in vocab_out:
          new_plain.setdefault(tok, None)
    if new_plain:
      out_tok.add_tokens(list(new_plain))
    for info in new_added.values():
      if info.special:
        out_tok.add_special_tokens([info])
      else:
        out_tok.add_tokens([info])
    vocab_out = out_tok.get_vocab(with_added_tokens=True)
  else:
    if source not in folders:
      raise ValueError(f"tokenizer_source {source!r} is not one of the models {models}.")
    vocab_out, _ = load_vocab(folders[source])
  size = max(len(vocab_out), max(vocab_out.values(), default=-1) + 1)
  perms = {}
  for m in models:
    p = np.full(size, -1, np.int64)
    vm = vocabs[m]
    for tok, i in vocab_out.items():
      j = vm.get(tok)
      if j is not None:
        p[i] = j
    perms[m] = p
  padded = None
  if pad_to_multiple_of and size % pad_to_multiple_of:
    padded = (size // pad_to_multiple_of + 1) * pad_to_multiple_of
  return VocabAlignment(vocab=vocab_out, size=size, perms=perms, tokenizer=out_tok,
                        padded_size=padded)
