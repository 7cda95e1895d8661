"""Offline byte-level text corpus: the Python standard library's own ``*.py`` source files.

Every Python installation ships its standard library, so the corpus needs no download and no
tokenizer: tokens are raw bytes (vocabulary 256). Files are assigned to the train or eval split by
a CRC32 of their file name (deterministic across runs and machines), and batches are a pure function
of ``(seed, step)``: the "iterator position" saved with a checkpoint is just the step number, which
makes resumption exact.

Example:
  >>> from jaxparams.train import data
  >>> corpus = data.load_corpus(max_bytes=200_000)
  >>> corpus.train.dtype, int(corpus.train.max()) < 256
  (dtype('uint8'), True)
  >>> batch = data.train_batch(corpus, step=0, batch_size=4, seq_len=16, seed=0)
  >>> batch.shape
  (4, 17)
"""

from __future__ import annotations

import dataclasses
import pathlib
import sysconfig
import zlib

import numpy as np

__all__ = ["Corpus", "load_corpus", "stdlib_files", "train_batch", "eval_batch", "VOCAB_SIZE",
           "load_named_corpus"]

VOCAB_SIZE = 256


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Train/eval byte arrays and the files they came from.

  Attributes:
    train: ``uint8`` array of the concatenated training files.
    eval: ``uint8`` array of the concatenated evaluation files.
    train_files: Names of the files in the training split.
    eval_files: Names of the files in the evaluation split.
  """
  train: np.ndarray
  eval: np.ndarray
  train_files: tuple[str, ...]
  eval_files: tuple[str, ...]


def stdlib_files(root: str | pathlib.Path | None = None) -> list[pathlib.Path]:
  """Returns the top-level ``*.py`` files of the standard library (or ``root``), sorted by name."""
  root = pathlib.Path(root if root is not None else sysconfig.get_paths()["stdlib"])
  files = sorted(root.glob("*.py"))
  if not files:
    raise ValueError(f"no *.py files found in {root}: cannot build the text corpus")
  return files


def load_corpus(*, root: str | pathlib.Path | None = None, max_bytes: int = 4_000_000,
                eval_percent: int = 5) -> Corpus:
  """Reads the corpus and splits it into train and eval bytes.

  A file goes to eval when ``crc32(file name) % 100 < eval_percent``. Each split is capped at
  ``max_bytes`` (eval at ``max(max_bytes // 10, 1)``), files taken in sorted order; each file is
  followed by a NUL byte separator.

  Args:
    root: Folder of ``*.py`` files; default the running Python's standard library.
    max_bytes: Maximum number of training bytes.
    eval_percent: Percentage (0-100) of files that go to the eval split.

  Returns:
    A :class:`Corpus`.

  Raises:
    ValueError: if a split is empty.
  """
  if not 0 < eval_percent < 100:
    raise ValueError(f"eval_percent must be in (0, 100), got {eval_percent}")
  splits = {"train": [], "eval": []}
  names = {"train": [], "eval": []}
  limits = {"train": max_bytes, "eval": max(max_bytes // 10, 1)}
  sizes = {"train": 0, "eval": 0}
  for path in stdlib_files(root):
    split = "eval" if zlib.crc32(path.name.encode()) % 100 < eval_percent else "train"
    if sizes[split] >= limits[split]:
      continue
    raw = (path.read_bytes() + b"\0")[: limits[split] - sizes[split]]
    splits[split].append(raw)
    names[split].append(path.name)
    sizes[split] += len(raw)
  arrays = {}
  for split, chunks in splits.items():
    if not chunks:
      raise ValueError(f"the {split} split of the corpus is empty (root={root}, "
                       f"eval_percent={eval_percent})")
    arrays[split] = np.frombuffer(b"".join(chunks), dtype=np.uint8)
  return Corpus(train=arrays["train"], eval=arrays["eval"],
                train_files=tuple(names["train"]), eval_files=tuple(names["eval"]))


def _windows(tokens: np.ndarray, rng: np.random.Generator, batch_size: int,
             seq_len: int) -> np.ndarray:
  if tokens.size < seq_len + 2:
    raise ValueError(f"corpus split has {tokens.size} bytes, fewer than seq_len + 2 = "
                     f"{seq_len + 2}")
  starts = rng.integers(0, tokens.size - seq_len - 1, size=batch_size)
  idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
  return tokens[idx].astype(np.int32)


def train_batch(corpus: Corpus, *, step: int, batch_size: int, seq_len: int,
                seed: int) -> np.ndarray:
  """The global training batch of ``step``: ``int32[batch_size, seq_len + 1]`` random windows.

  Inputs are ``batch[:, :-1]`` and targets ``batch[:, 1:]``. A pure function of its arguments.
  """
  rng = np.random.default_rng([seed, 0, step])
  return _windows(corpus.train, rng, batch_size, seq_len)


def eval_batch(corpus: Corpus, *, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
  """The fixed evaluation batch ``int32[batch_size, seq_len + 1]`` drawn from the eval split."""
  rng = np.random.default_rng([seed, 1])
  return _windows(corpus.eval, rng, batch_size, seq_len)


def load_named_corpus(name: str, data_config) -> Corpus:
  """Calls ``module:function`` (``config.data.corpus``) with ``data_config``; returns its Corpus.

  The function returns a :class:`Corpus` whose ``train``/``eval`` arrays hold integer token ids
  (any vocabulary); batches are drawn from them exactly as from the byte corpus.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  module, sep, fn = name.partition(":")
  if not sep or not module or not fn:
    raise ValueError(f"config.data.corpus must be 'module:function', found {name!r}")
  corpus = getattr(importlib.import_module(module), fn)(data_config)
  if not isinstance(corpus, Corpus):
    raise ValueError(f"config.data.corpus {name!r} returned {type(corpus).__name__}, "
                     "expected jaxparams.train.data.Corpus")
  return corpus
