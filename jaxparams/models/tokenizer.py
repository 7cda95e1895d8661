"""The tokenizer of an HF checkpoint folder through the ``tokenizers`` library.

Every family ships a ``tokenizer.json`` (fast tokenizer); :func:`load_tokenizer` opens it, with
padding set to the checkpoint's pad token (``pad_token_id`` of ``config.json``, else a token
named like a pad/end token, else id 0) so batches come out right-padded with an
``attention_mask``, as the models expect.

Example:
  >>> import json, os, tempfile
  >>> from tokenizers import Tokenizer, models, pre_tokenizers
  >>> tok = Tokenizer(models.WordLevel({'<pad>': 0, 'a': 1, 'b': 2, '<unk>': 3}, unk_token='<unk>'))
  >>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
  >>> d = tempfile.mkdtemp(); tok.save(os.path.join(d, 'tokenizer.json'))
  >>> t = load_tokenizer(d)
  >>> [e.ids for e in t.encode_batch(['a b a', 'b'])]
  [[1, 2, 1], [2, 0, 0]]
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["load_tokenizer"]

_PAD_NAMES = ("<pad>", "[PAD]", "<|endoftext|>", "</s>", "<eos>")


def load_tokenizer(path: str | Path, *, max_length: int | None = None):
  """``tokenizers.Tokenizer`` from ``path/tokenizer.json`` with padding (and truncation) on.

  Both files are read by the strict io readers (:func:`jaxparams.io.load_tokenizer_file`,
  :func:`jaxparams.io.read_model_config`): inside the folder, size-bounded, checked.

  Raises:
    FileNotFoundError: the folder has no ``tokenizer.json``.
    ValueError: either file fails its reader's checks, or the tokenizer has ids beyond
      ``vocab_size``.
  """
  from jaxparams import io as jio  # pylint: disable=g-import-not-at-top
  path = Path(path)
  file = path / "tokenizer.json" if path.is_dir() else path
  if not file.is_file() and not file.is_symlink():
    raise FileNotFoundError(f"{file}: no tokenizer.json (only fast tokenizers are supported)")
  if file.name != "tokenizer.json":
    raise ValueError(f"{file}: expected a folder holding tokenizer.json, or that file")
  pad_id, vocab_size = None, None
  if (file.parent / "config.json").is_file() or (file.parent / "config.json").is_symlink():
    cfg = jio.read_model_config(file.parent)
    v = cfg.get("pad_token_id")
    pad_id = v if isinstance(v, int) else None
    vocab_size = cfg.get("vocab_size")
  tok = jio.load_tokenizer_file(file.parent, vocab_size=vocab_size)
  if pad_id is None or tok.id_to_token(pad_id) is None:
    pad_id = next((tok.token_to_id(t) for t in _PAD_NAMES if tok.token_to_id(t) is not None), 0)
  tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "<pad>")
  if max_length is not None:
    tok.enable_truncation(max_length=max_length)
  return tok
