"""The calibration corpus: offline real-prose sentences (no downloads) and their batches.

* :func:`docstring_sentences`: sentences from the docstrings of Python's own
  standard library (always installed; the exact set depends on the Python version).
* :func:`reference_sentences`: sentences from the Python language reference as
  shipped for ``help()`` (``pydoc_data.topics``).
* :func:`sklearn_sentences`: sentences from scikit-learn's bundled dataset
  descriptions (``sklearn/datasets/descr/*.rst``), when scikit-learn is installed.

The sources do not overlap, so one can calibrate on the first and evaluate on
the second. :func:`text_batches` tokenizes texts into padded calibration batches.

Example:
  >>> s = docstring_sentences(5)
  >>> len(s), all(len(x.split()) >= 6 for x in s)
  (5, True)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["docstring_sentences", "folder_text_batches", "reference_sentences", "sample_evenly", "sklearn_sentences",
           "split_sentences", "text_batches"]

_STDLIB = ("json", "re", "collections", "argparse", "textwrap", "itertools", "functools",
           "pathlib", "subprocess", "logging", "shutil", "tempfile", "string", "heapq", "bisect",
           "statistics", "fractions", "decimal", "datetime", "calendar", "csv", "zipfile",
           "tarfile", "difflib", "pprint", "enum", "dataclasses", "contextlib", "threading",
           "queue", "socket", "urllib.parse", "http.client", "email.message", "unittest",
           "doctest", "inspect", "typing", "random", "copy", "pickle", "base64", "hashlib")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def split_sentences(text: str, *, min_words: int = 6, max_words: int = 60) -> list[str]:
  """Splits prose into sentences, dropping code, tables and very short or long pieces.

  Example:
    >>> split_sentences('This is a short one. This sentence has quite a few more words in it.')
    ['This sentence has quite a few more words in it.']
  """
  out = []
  for para in re.split(r"\n\s*\n", text):
    lines = [ln.strip() for ln in para.splitlines()]
    if not lines or any(ln.startswith((">>>", "...", "|", "=", "-", "+", ":", "..", "*"))
                        for ln in lines[:1]):
      continue
    flat = " ".join(ln for ln in lines if ln)
    for s in _SENT.split(flat):
      s = s.strip()
      words = s.split()
      if min_words <= len(words) <= max_words and s[-1:] in ".!?" and not re.search(
          r"[{}<>\\`_]|::|\(\)|\w\.\w+\(", s):
        out.append(s)
  return out


def docstring_sentences(limit: int | None = None) -> list[str]:
  """Unique sentences from standard-library docstrings, in a fixed module order."""
  seen: dict[str, None] = {}
  for name in _STDLIB:
    try:
      mod = importlib.import_module(name)
    except ImportError:
      continue
    docs = [inspect.getdoc(mod) or ""]
    for attr in sorted(vars(mod)):
      if attr.startswith("_"):
        continue
      obj = getattr(mod, attr)
      if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__",
                                                                       "") == mod.__name__:
        docs.append(inspect.getdoc(obj) or "")
    for d in docs:
      for s in split_sentences(d):
        seen.setdefault(s)
        if limit is not None and len(seen) >= limit:
          return list(seen)
  return list(seen)


def sklearn_sentences(limit: int | None = None) -> list[str]:
  """Unique sentences from scikit-learn's dataset descriptions (empty if not installed)."""
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    return []
  folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "descr"
  seen: dict[str, None] = {}
  for f in sorted(folder.glob("*.rst")):
    for s in split_sentences(f.read_text(errors="replace")):
      seen.setdefault(s)
      if limit is not None and len(seen) >= limit:
        return list(seen)
  return list(seen)


def reference_sentences(limit: int | None = None) -> list[str]:
  """Unique sentences of the Python language reference (``help()`` topics), topic by topic."""
  try:
    from pydoc_data.topics import topics  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  seen: dict[str, None] = {}
  for key in sorted(topics):
    for s in split_sentences(topics[key]):
      seen.setdefault(s)
      if limit is not None and len(seen) >= limit:
        return list(seen)
  return list(seen)


def sample_evenly(texts: Sequence[str], n: int) -> list[str]:
  """At most ``n`` of ``texts``, evenly spaced over the list (first and last kept).

  Example:
    >>> sample_evenly([str(i) for i in range(10)], 4)
    ['0', '3', '6', '9']
  """
  texts = list(texts)
  if len(texts) <= n:
    return texts
  idx = np.linspace(0, len(texts) - 1, n).round().astype(int)
  return [texts[i] for i in idx]


def text_batches(tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32,
                 max_length: int = 128, token_type_ids: bool = False) -> list[dict[str, np.ndarray]]:
  """Tokenizes calibration texts into padded batches ``{'input_ids', 'attention_mask'}``.

  Args:
    tokenizer: a ``tokenizers.Tokenizer`` (padding/truncation are set on a copy).
    texts: the calibration texts (empty lines are dropped).
    batch_size: sentences per batch.
    max_length: truncation length in tokens.
    token_type_ids: also return zeros ``token_type_ids`` (BERT).

  Raises:
    ValueError: no non-empty text.

  Example:
    >>> import jaxparams.models
    >>> tok = jaxparams.models.minilm.load_tokenizer(jaxparams.models.minilm.minilm_path())
    >>> b = text_batches(tok, docstring_sentences(3), max_length=8)
    >>> len(b), b[0]['input_ids'].shape
    (1, (3, 8))
  """
  texts = [t for t in (s.strip() for s in texts) if t]
  if not texts:
    raise ValueError("calibration text is empty")
  import copy  # pylint: disable=g-import-not-at-top
  tok = copy.deepcopy(tokenizer)
  tok.enable_truncation(max_length=max_length)
  pad_id = next((tok.token_to_id(t) for t in ("[PAD]", "<pad>", "</s>", "<|endoftext|>")
                 if tok.token_to_id(t) is not None), 0)
  tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "[PAD]")
  out = []
  for i in range(0, len(texts), batch_size):
    encs = tok.encode_batch(texts[i:i + batch_size])
    b = {"input_ids": np.array([e.ids for e in encs], np.int32),
         "attention_mask": np.array([e.attention_mask for e in encs], np.int32)}
    if token_type_ids:
      b["token_type_ids"] = np.zeros_like(b["input_ids"])
    out.append(b)
  return out


def folder_text_batches(folder: Any, texts: Sequence[str], *, batch_size: int = 32,
                        max_length: int = 128, token_type_ids: bool = False,
                        purpose: str = "the calibration text cannot be tokenized"
                        ) -> list[dict[str, np.ndarray]]:
  """:func:`text_batches` of ``texts`` with the ``tokenizer.json`` of the model ``folder``.

  The tokenizer is opened by :func:`jaxparams.models.hf_open.hf_tokenizer` (refused when
  missing, a symlink out of the folder, too large or invalid).

  Raises:
    ValueError: no usable ``tokenizer.json`` (the folder and ``purpose`` named); no text.
  """
  from jaxparams.models.hf_open import hf_tokenizer  # pylint: disable=g-import-not-at-top
  return text_batches(hf_tokenizer(folder, purpose=purpose), texts, batch_size=batch_size,
                      max_length=max_length, token_type_ids=token_type_ids)
