"""The one reader of a model folder's ``tokenizer.json`` (Hugging Face ``tokenizers``).

:func:`read_tokenizer_json` reads ``<folder>/tokenizer.json`` through
:func:`jaxparams.io.read_json` (size checked with ``os.stat`` before reading, a symlink leading
outside the folder refused without reading it, UTF-8, no NaN/duplicate keys) and checks its shape
before the Rust parser sees it: an object with a ``model`` object; the model's ``vocab`` an
object of non-negative integer ids (WordPiece/BPE/WordLevel) or a list of ``[piece, score]``
(Unigram); ``added_tokens`` a list of objects with integer ``id`` and string ``content``.
:func:`load_tokenizer_file` then builds the ``tokenizers.Tokenizer`` and, given the model's
``vocab_size`` (its embedding rows), refuses a tokenizer that can produce an id the model has no
row for (those surface later as NaN, not as an error).

Example:
  >>> import json, os, tempfile
  >>> d = tempfile.mkdtemp()
  >>> _ = open(os.path.join(d, 'tokenizer.json'), 'w').write('[]')
  >>> read_tokenizer_json(d)
  Traceback (most recent call last):
  ...
  ValueError: .../tokenizer.json: tokenizer.json must be a JSON object, found list []
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxparams.io import fields as F
from jaxparams.io.text_files import describe, read_json

__all__ = ["read_tokenizer_json", "load_tokenizer_file", "max_token_id", "MAX_TOKENIZER_BYTES"]

#: Size limit of ``tokenizer.json`` (the largest public ones are ~35 MB).
MAX_TOKENIZER_BYTES = 256 * 2**20
_MAX_ID = 2**31 - 1


def _check_id(where: str, field: str, value: Any) -> int:
  return F.expect_int(where, field, value, lo=0, hi=_MAX_ID)


def max_token_id(tok: dict[str, Any], where: str) -> int:
  """The largest id a checked ``tokenizer.json`` dict can produce (-1 when it has none)."""
  model = tok["model"]
  vocab = model.get("vocab")
  top = -1
  if isinstance(vocab, dict):
    for piece, i in vocab.items():
      top = max(top, _check_id(where, f"model.vocab[{piece[:40]!r}]", i))
  elif isinstance(vocab, list):  # Unigram: the id is the position
    for j, item in enumerate(vocab):
      if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
        raise ValueError(f"{where}: field 'model.vocab[{j}]' must be [piece, score], found "
                         f"{describe(item)}")
    top = len(vocab) - 1
  elif vocab is not None:
    raise ValueError(f"{where}: field 'model.vocab' must be an object or a list, found "
                     f"{describe(vocab)}")
  for t in tok.get("added_tokens") or []:
    top = max(top, t["id"])
  return top


def read_tokenizer_json(folder: str | Path, *, max_bytes: int = MAX_TOKENIZER_BYTES
                        ) -> tuple[dict[str, Any], int]:
  """Reads and checks ``folder/tokenizer.json``; returns ``(the JSON object, its largest id)``.

  Raises:
    FileNotFoundError: no ``tokenizer.json``.
    ValueError: outside the folder, too large, not UTF-8 or JSON, not an object, a ``model``
      that is not an object, an id that is not a non-negative integer, a malformed added token
      (the file and field named).
  """
  folder = Path(folder)
  file = folder / "tokenizer.json"
  if not file.exists() and not file.is_symlink():
    raise FileNotFoundError(f"{folder}: no tokenizer.json")
  where = str(file)
  tok = F.expect_object(where, read_json(file, what="tokenizer.json", max_bytes=max_bytes,
                                         folder=folder), "tokenizer.json")
  F.expect_object(where, tok.get("model"), "field 'model'")
  added = tok.get("added_tokens")
  if added is not None and not isinstance(added, list):
    raise ValueError(f"{where}: field 'added_tokens' must be a list, found {describe(added)}")
  for j, t in enumerate(added or []):
    F.expect_object(where, t, f"field 'added_tokens[{j}]'")
    _check_id(where, f"added_tokens[{j}].id", t.get("id"))
    F.expect_str(where, f"added_tokens[{j}].content", t.get("content"))
  return tok, max_token_id(tok, where)


def load_tokenizer_file(folder: str | Path, *, vocab_size: int | None = None,
                        max_bytes: int = MAX_TOKENIZER_BYTES) -> Any:
  """The ``tokenizers.Tokenizer`` of ``folder/tokenizer.json``, checked (no padding set).

  Args:
    folder: the model folder.
    vocab_size: the model's embedding rows; a tokenizer producing a larger id is refused.
    max_bytes: size limit, checked before reading.

  Raises:
    FileNotFoundError: no ``tokenizer.json``.
    ValueError: the checks of :func:`read_tokenizer_json`; the ``tokenizers`` library refuses it;
      an id ``>= vocab_size``.
  """
  import json  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  tok, top = read_tokenizer_json(folder, max_bytes=max_bytes)
  file = Path(folder) / "tokenizer.json"
  if vocab_size is not None and top >= vocab_size:
    raise ValueError(f"{file}: the tokenizer has token id {top} but the model's vocabulary has "
                     f"{vocab_size} rows (ids 0..{vocab_size - 1}); this tokenizer does not "
                     "belong to this model")
  try:
    return Tokenizer.from_str(json.dumps(tok))
  except Exception as e:  # pylint: disable=broad-except  (the Rust parser's errors vary)
    raise ValueError(f"{file}: not a valid tokenizers tokenizer.json "
                     f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}).") from None
