"""Vocabulary trimming: keep the tokens a corpus uses, gather their embedding rows.

Ushio, Zhou, Camacho-Collados, "An Efficient Multilingual Language Model
Compression through Vocabulary Trimming" (Findings EMNLP 2023; reference
asahi417/lm-vocab-trimmer):

1. tokenise a target corpus with the model's tokenizer and count token ids;
2. keep ids with frequency ≥ ``min_frequency``, optionally only the
   ``target_vocab_size`` most frequent; always keep the special tokens and any
   ``tokens_to_keep``;
3. ``new_ids = sorted(kept)``: gather those rows of every vocab-indexed leaf
   (input embedding, untied LM head and its bias);
4. rewrite the tokenizer so token ``kept[j]`` gets id ``j``.

For a WordPiece tokenizer (BERT, all-MiniLM-L6-v2) greedy longest-match
segmentation of a word can only change if one of its chosen pieces was
removed, so any text whose original tokens are all kept is tokenised to the
remapped ids, and the trimmed model's outputs on it are *identical* (a gather
does not change any value).

Example:
  >>> import numpy as np
  >>> counts = np.array([0, 5, 1, 3, 0])
  >>> select_vocab(counts, VocabTrimConfig(min_frequency=1), special_ids=[0]).tolist()
  [0, 1, 2, 3]
  >>> params = {'embed': {'embedding': np.arange(10.0).reshape(5, 2)}}
  >>> trim_params(params, np.array([0, 3]), vocab_size=5)['embed']['embedding'].tolist()
  [[0.0, 1.0], [6.0, 7.0]]
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree

__all__ = [
    "DEFAULT_VOCAB_LEAVES", "TrimResult", "VocabTrimConfig", "count_tokens", "remap_ids",
    "select_vocab", "trim_params", "trim_tokenizer_json", "trim_vocab", "write_tokenizer",
]

DEFAULT_VOCAB_LEAVES: tuple[tuple[str, int], ...] = (
    ("**word_embeddings/embedding", 0),      # jaxparams.models.Bert
    ("**embed_tokens/embedding", 0),         # jaxparams.models.Llama
    ("**lm_head/kernel", -1),                # untied Llama head [hidden, vocab]
    ("**lm_head/bias", 0),
    ("**decoder/bias", 0),                   # BERT MLM head bias
    ("embed/embedding", 0),                  # TokenFormer / flax nn.Embed at the root
)
"""(glob, vocab axis) rules for vocab-indexed leaves; a leaf must also have size vocab_size there."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class VocabTrimConfig:
  """Which tokens to keep.

  Attributes:
    min_frequency: keep ids seen at least this often in the corpus. Default 1: every token of
      the texts is kept, so the texts tokenise (and embed) exactly as before. The
      vocabulary-trimming paper's tool defaults to 2, which turns tokens seen once into
      ``[UNK]`` and changes those texts' own embeddings; pass 2 for that.
    target_vocab_size: optional final vocabulary size (special and forced
      tokens included); the most frequent corpus tokens fill the rest.
    keep_special: keep every special/added token of the tokenizer.
    tokens_to_keep: extra token strings to keep regardless of frequency.
  """
  min_frequency: int = 1
  target_vocab_size: int | None = None
  keep_special: bool = True
  tokens_to_keep: tuple[str, ...] = ()

  def __post_init__(self):
    if self.min_frequency < 1:
      raise ValueError(f"VocabTrimConfig.min_frequency must be >= 1, found {self.min_frequency}")
    if self.target_vocab_size is not None and self.target_vocab_size < 1:
      raise ValueError(f"VocabTrimConfig.target_vocab_size must be >= 1, found "
                       f"{self.target_vocab_size}")


def count_tokens(tokenizer: Any, texts: Iterable[str], vocab_size: int, *,
                 batch_size: int = 500) -> np.ndarray:
  """Token-id frequencies ``int64[vocab_size]`` of a corpus (special tokens not added).

  Args:
    tokenizer: a ``tokenizers.Tokenizer``.
    texts: the corpus (processed in chunks of ``batch_size`` as VT does).
    vocab_size: length of the count vector.
  """
  counts = np.zeros(vocab_size, np.int64)
  batch: list[str] = []

  def flush():
    for enc in tokenizer.encode_batch(batch, add_special_tokens=False):
      ids = np.asarray(enc.ids, np.int64)
      if ids.size and ids.max() >= vocab_size:
        raise ValueError(f"count_tokens: token id {int(ids.max())} >= vocab_size={vocab_size}")
      np.add.at(counts, ids, 1)
    batch.clear()

  for text in texts:
    batch.append(text)
    if len(batch) >= batch_size:
      flush()
  if batch:
    flush()
  return counts


def select_vocab(counts: np.ndarray, config: VocabTrimConfig, *,
                 special_ids: Sequence[int] = (), forced_ids: Sequence[int] = ()) -> np.ndarray:
  """Sorted kept ids from corpus counts (see module doc).

  Raises:
    ValueError: if the special + forced tokens alone exceed ``target_vocab_size``.
  """
  counts = np.asarray(counts)
  always = sorted(set(int(i) for i in special_ids) | set(int(i) for i in forced_ids)) \
      if config.keep_special else sorted(set(int(i) for i in forced_ids))
  bad = [i for i in always if not 0 <= i < counts.shape[0]]
  if bad:
    raise ValueError(f"select_vocab: ids {bad} outside the vocabulary [0, {counts.shape[0]})")
  candidates = np.flatnonzero(counts >= config.min_frequency)
  candidates = candidates[~np.isin(candidates, always)]
  if config.target_vocab_size is not None:
    room = config.target_vocab_size - len(always)
    if room < 0:
      raise ValueError(f"select_vocab: target_vocab_size={config.target_vocab_size} is smaller than "
                       f"the {len(always)} special/forced tokens that must be kept")
    order = np.argsort(-counts[candidates], kind="stable")   # ties: lower id first
    candidates = candidates[order[:room]]
  return np.array(sorted(set(always) | set(candidates.tolist())), np.int64)


def remap_ids(kept_ids: np.ndarray, vocab_size: int) -> np.ndarray:
  """``old id -> new id`` table ``int64[vocab_size]`` (-1 for removed ids)."""
  table = np.full(vocab_size, -1, np.int64)
  table[np.asarray(kept_ids)] = np.arange(len(kept_ids))
  return table


def trim_params(params: Any, kept_ids: np.ndarray, *, vocab_size: int,
                leaves: Sequence[tuple[str, int]] = DEFAULT_VOCAB_LEAVES) -> Any:
  """Gather the kept rows of every vocab-indexed leaf.

  Args:
    params: param tree.
    kept_ids: sorted kept ids.
    vocab_size: the current vocabulary size (checked against each leaf).
    leaves: ``(glob, axis)`` rules; the first matching rule gives a leaf's
      vocab axis. Leaves matching no rule are unchanged.

  Raises:
    ValueError: if no leaf matches, or a matched leaf has the wrong size.
  """
  kept = np.asarray(kept_ids)
  if kept.size == 0:
    raise ValueError("trim_params: kept_ids is empty")
  if kept.min() < 0 or kept.max() >= vocab_size:
    raise ValueError(f"trim_params: kept ids must lie in [0, {vocab_size})")
  flat = jtree.flatten(params)
  rules = [(jtree.compile_pattern(g), g, axis) for g, axis in leaves]
  out, touched = dict(flat), []
  for path, leaf in flat.items():
    for match, glob, axis in rules:
      if match(path):
        if np.ndim(leaf) == 0 or leaf.shape[axis] != vocab_size:
          raise ValueError(f"trim_params: {path} matched {glob!r} but has shape "
                           f"{tuple(np.shape(leaf))}; expected size {vocab_size} on axis {axis}")
        xp = np if isinstance(leaf, np.ndarray) else jnp
        out[path] = xp.take(leaf, kept, axis=axis)
        touched.append(path)
        break
  if not touched:
    raise ValueError(f"trim_params: no vocab-indexed leaf found (rules {[g for g, _ in leaves]}); "
                     f"paths start with {list(flat)[:5]}")
  return jtree.unflatten(out, like=params)


def trim_tokenizer_json(tokenizer_json: Mapping[str, Any], kept_ids: np.ndarray) -> dict[str, Any]:
  """Rewrite a ``tokenizer.json`` dict (WordPiece) so ``kept_ids[j]`` becomes id j.

  Remaps ``model.vocab``, ``added_tokens``, the post-processor's special-token
  ids and the padding id.

  Raises:
    ValueError: for non-WordPiece models, or when a special token the
      tokenizer needs (added tokens, unk token, post-processor tokens) is removed.
  """
  d = copy.deepcopy(dict(tokenizer_json))
  model = d.get("model", {})
  if model.get("type") != "WordPiece":
    raise ValueError(f"trim_tokenizer_json: tokenizer model type {model.get('type')!r} is not "
                     f"supported; supported: 'WordPiece' (BPE merges would need re-deriving)")
  vocab: dict[str, int] = model["vocab"]
  table = remap_ids(kept_ids, max(vocab.values()) + 1)

  def new_id(old: int, what: str) -> int:
    if not 0 <= old < table.shape[0] or table[old] < 0:
      raise ValueError(f"trim_tokenizer_json: {what} (id {old}) was removed; keep it "
                       f"(VocabTrimConfig.keep_special / tokens_to_keep)")
    return int(table[old])

  model["vocab"] = {tok: int(table[i]) for tok, i in sorted(vocab.items(), key=lambda kv: kv[1])
                    if table[i] >= 0}
  unk = model.get("unk_token")
  if unk is not None and unk in vocab:
    new_id(vocab[unk], f"unk token {unk!r}")
  for tok in d.get("added_tokens") or []:
    tok["id"] = new_id(int(tok["id"]), f"added token {tok['content']!r}")
  post = d.get("post_processor") or {}
  for name, spec in (post.get("special_tokens") or {}).items():
    spec["ids"] = [new_id(int(i), f"post-processor token {name!r}") for i in spec["ids"]]
  if d.get("padding"):
    d["padding"]["pad_id"] = new_id(int(d["padding"]["pad_id"]), "padding token")
  return d


@dataclasses.dataclass(frozen=True)
class TrimResult:
  """Output of `trim_vocab`.

  Attributes:
    params: trimmed params.
    tokenizer_json: rewritten tokenizer.json dict.
    kept_ids: sorted old ids kept (new id j ↔ old id ``kept_ids[j]``).
    old_vocab_size, new_vocab_size: sizes.
    old_params, new_params: total parameter counts before and after.
  """
  params: Any
  tokenizer_json: dict
  kept_ids: np.ndarray
  old_vocab_size: int
  new_vocab_size: int
  old_params: int
  new_params: int

  @property
  def param_reduction(self) -> float:
    """Fraction of parameters removed."""
    return 1.0 - self.new_params / self.old_params


def _num_params(params: Any) -> int:
  return int(sum(np.size(x) for x in jtree.flatten(params).values()))


def trim_vocab(params: Any, tokenizer_json: Mapping[str, Any] | str | Path, texts: Iterable[str],
               config: VocabTrimConfig = VocabTrimConfig(), *,
               leaves: Sequence[tuple[str, int]] = DEFAULT_VOCAB_LEAVES) -> TrimResult:
  """Trim a model's vocabulary to the tokens of ``texts`` (plus special tokens).

  Args:
    params: model params.
    tokenizer_json: the tokenizer.json dict, or a path to the file.
    texts: target corpus.
    config: `VocabTrimConfig`.
    leaves: vocab-indexed leaf rules for `trim_params`.

  Returns:
    A `TrimResult`; update the model config with ``vocab_size=result.new_vocab_size``.
  """
  from tokenizers import Tokenizer  # optional dependency (jaxparams[demo])

  if isinstance(tokenizer_json, (str, Path)):
    from jaxparams import io as jio  # pylint: disable=import-outside-toplevel
    p = Path(tokenizer_json)
    if p.is_dir() or p.name == "tokenizer.json":  # the strict reader (size, folder, ids)
      tokenizer_json = jio.read_tokenizer_json(p if p.is_dir() else p.parent)[0]
    else:
      tokenizer_json = jio.read_json(p, what="tokenizer file")
  tok = Tokenizer.from_str(json.dumps(tokenizer_json))
  tok.no_truncation()
  tok.no_padding()
  vocab_size = tok.get_vocab_size(with_added_tokens=True)
  counts = count_tokens(tok, texts, vocab_size)
  special = [int(t["id"]) for t in tokenizer_json.get("added_tokens") or []]
  forced = []
  for t in config.tokens_to_keep:
    i = tok.token_to_id(t)
    if i is None:
      raise ValueError(f"trim_vocab: tokens_to_keep entry {t!r} is not in the vocabulary")
    forced.append(i)
  kept = select_vocab(counts, config, special_ids=special, forced_ids=forced)
  new_params = trim_params(params, kept, vocab_size=vocab_size, leaves=leaves)
  new_tok = trim_tokenizer_json(tokenizer_json, kept)
  return TrimResult(new_params, new_tok, kept, vocab_size, len(kept), _num_params(params),
                    _num_params(new_params))


def write_tokenizer(tokenizer_json: Mapping[str, Any], out_dir: str | Path) -> Path:
  """Write ``tokenizer.json`` (and ``vocab.txt`` for WordPiece) into ``out_dir``.

  Returns:
    The path of the written tokenizer.json.
  """
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  path = out / "tokenizer.json"
  path.write_text(json.dumps(tokenizer_json, ensure_ascii=False, indent=2))
  model = tokenizer_json.get("model", {})
  if model.get("type") == "WordPiece":
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in by_id), encoding="utf-8")
  return path
