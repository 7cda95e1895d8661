"""Facts, relations and edits files, their word-level tokenizer and the training corpus.

Formats (one definition, used by the facts LM, the benchmark and the CLI):

* facts (JSONL): ``{"subject": "...", "relation": "...", "object": "..."}`` one per line;
* relations (JSON): ``{"<relation>": {"prompts": ["The capital of {} is", ...]}}``; the first
  prompt is the edit prompt, the others are paraphrases;
* edits (JSONL): ``{"subject": "...", "relation": "...", "target_new": "..."}``.

The default set (invented names, 600 facts, 6 relations, 300 edits) ships in
``jaxparams/edit/data`` and was written by ``benchmarks/make_facts_set.py``.

Example:
  >>> fs = load_facts_set()
  >>> len(fs.facts), len(fs.relations), len(fs.edits)
  (600, 6, 300)
  >>> tok = build_tokenizer(fs)
  >>> sentence(fs.relations['city'][0], 'Abel Arbright', 'Yssel')
  'Abel Arbright lives in the city of Yssel'
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

from jaxparams import io as jio

__all__ = ["Fact", "Edit", "FactsSet", "load_facts_set", "default_paths", "build_tokenizer",
           "sentence", "encode_words", "build_corpus", "stats_sentences", "STATS_SOURCES",
           "SPECIAL_TOKENS", "BOS"]

DATA = pathlib.Path(__file__).resolve().parent / "data"
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


@dataclasses.dataclass(frozen=True)
class Fact:
  subject: str
  relation: str
  object: str


@dataclasses.dataclass(frozen=True)
class Edit:
  subject: str
  relation: str
  target_new: str


@dataclasses.dataclass(frozen=True)
class FactsSet:
  """Facts, relation prompts and edits, checked against each other.

  Attributes:
    facts: The facts, in file order.
    relations: ``relation -> tuple of prompts`` (first = edit prompt, rest = paraphrases).
    edits: The edit requests, in file order.
  """
  facts: tuple[Fact, ...]
  relations: dict[str, tuple[str, ...]]
  edits: tuple[Edit, ...]

  def object_of(self, subject: str, relation: str) -> str:
    """The object of a fact; raises ValueError when there is no such fact."""
    for f in self.facts:
      if f.subject == subject and f.relation == relation:
        return f.object
    raise ValueError(f"no fact with subject {subject!r} and relation {relation!r}")


def default_paths() -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """Paths of the packaged default ``(facts.jsonl, relations.json, edits.jsonl)``."""
  return DATA / "facts.jsonl", DATA / "relations.json", DATA / "edits.jsonl"


def _read_jsonl(path: pathlib.Path, keys: tuple[str, ...]) -> list[dict[str, str]]:
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  rows = []
  for i, line in enumerate(jio.read_text(path, what="facts file").splitlines(), 1):
    if not line.strip():
      continue
    row = jio.parse_json(line, f"{path}:{i}", "line")
    if not isinstance(row, dict) or sorted(row) != sorted(keys):
      found = sorted(row) if isinstance(row, dict) else type(row).__name__
      raise ValueError(f"{path}:{i}: expected an object with keys {list(keys)}, found {found}")
    for k in keys:
      if not isinstance(row[k], str) or not row[k].strip():
        raise ValueError(f"{path}:{i}: {k!r} must be a non-empty string, found {row[k]!r}")
    rows.append(row)
  if not rows:
    raise ValueError(f"{path}: no records")
  return rows


def _read_relations(path: pathlib.Path) -> dict[str, tuple[str, ...]]:
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  raw = jio.read_json(path, what="relations file")
  if not isinstance(raw, dict) or not raw:
    raise ValueError(f"{path}: expected a non-empty object {{relation: {{'prompts': [...]}}}}")
  out = {}
  for rel, spec in raw.items():
    prompts = spec.get("prompts") if isinstance(spec, dict) else None
    if not isinstance(prompts, list) or not prompts:
      raise ValueError(f"{path}: relation {rel!r} needs a non-empty list 'prompts'")
    for p in prompts:
      if not isinstance(p, str) or p.count("{}") != 1:
        raise ValueError(f"{path}: relation {rel!r}: prompt {p!r} must contain '{{}}' exactly "
                         "once (the subject)")
    out[rel] = tuple(prompts)
  return out


def load_facts_set(facts: str | pathlib.Path | None = None,
                   relations: str | pathlib.Path | None = None,
                   edits: str | pathlib.Path | None = None) -> FactsSet:
  """Reads and cross-checks the three files (``None``: the packaged default of that file).

  Raises:
    ValueError: a malformed line (file and line number), a relation without prompts, a fact or
      edit whose relation is unknown, an edit of a subject/relation with no fact, or an edit whose
      target equals the current object.
  """
  d_f, d_r, d_e = default_paths()
  fp, rp, ep = (pathlib.Path(p) if p is not None else d for p, d in
                ((facts, d_f), (relations, d_r), (edits, d_e)))
  rels = _read_relations(rp)
  fact_rows = _read_jsonl(fp, ("subject", "relation", "object"))
  edit_rows = _read_jsonl(ep, ("subject", "relation", "target_new"))
  known = {}
  for i, r in enumerate(fact_rows, 1):
    if r["relation"] not in rels:
      raise ValueError(f"{fp}:{i}: relation {r['relation']!r} is not in {rp} (known: "
                       f"{', '.join(rels)})")
    known[(r["subject"], r["relation"])] = r["object"]
  for i, r in enumerate(edit_rows, 1):
    key = (r["subject"], r["relation"])
    if key not in known:
      raise ValueError(f"{ep}:{i}: no fact in {fp} has subject {r['subject']!r} and relation "
                       f"{r['relation']!r}")
    if known[key] == r["target_new"]:
      raise ValueError(f"{ep}:{i}: target_new {r['target_new']!r} equals the current object")
  return FactsSet(facts=tuple(Fact(**r) for r in fact_rows), relations=rels,
                  edits=tuple(Edit(**r) for r in edit_rows))


def sentence(prompt: str, subject: str, obj: str | None = None) -> str:
  """The prompt with the subject filled in, followed by the object when given."""
  text = prompt.replace("{}", subject)
  return text if obj is None else f"{text} {obj}"


STATS_SOURCES = ("other_subjects", "unedited", "all")


def stats_sentences(fs: FactsSet, source: str = "other_subjects",
                    edits: Any = None) -> list[str]:
  """Sentences (every phrasing, with the object) whose MLP keys give the key statistics ``C0``.

  Args:
    fs: The facts set.
    source: ``'other_subjects'``: the facts of subjects that no edit names -- the analogue of the
      reference's ``C0`` over Wikipedia text, which is not made of the edited facts or of the
      edited subjects' other facts; ``'unedited'``: every fact that no edit changes (the edited
      subjects' other facts included); ``'all'``: every fact.
    edits: The edits made (default ``fs.edits``).

  Raises:
    ValueError: an unknown ``source``, or no sentence left.

  Example:
    >>> fs = load_facts_set()
    >>> len(stats_sentences(fs, 'all')), len(stats_sentences(fs, 'unedited'))
    (2400, 1200)
    >>> len(stats_sentences(fs, 'other_subjects', fs.edits[:10])) // 24
    90
  """
  if source not in STATS_SOURCES:
    raise ValueError(f"unknown statistics source {source!r}; valid: {', '.join(STATS_SOURCES)}")
  edits = fs.edits if edits is None else tuple(edits)
  pairs = {(e.subject, e.relation) for e in edits}
  subjects = {e.subject for e in edits}
  keep = {"all": lambda f: True,
          "unedited": lambda f: (f.subject, f.relation) not in pairs,
          "other_subjects": lambda f: f.subject not in subjects}[source]
  out = [sentence(p, f.subject, f.object) for f in fs.facts if keep(f)
         for p in fs.relations[f.relation]]
  if not out:
    raise ValueError(f"statistics source {source!r}: no fact is left (every subject is edited); "
                     "use a set with subjects that no edit names (make_facts_set.py "
                     "--distinct-subjects) or another source")
  return out


def build_tokenizer(fs: FactsSet) -> Any:
  """A word-level ``tokenizers.Tokenizer`` over every word of the facts set.

  Words are split on whitespace and punctuation; the vocabulary is the special tokens
  ``<pad> <s> </s> <unk>`` followed by the sorted words (deterministic). Targets and objects are
  included, so every edit target encodes to known tokens.
  """
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  words: set[str] = set()
  split = pre_tokenizers.Whitespace()
  texts = [p for ps in fs.relations.values() for p in ps]
  texts += [f.subject for f in fs.facts] + [f.object for f in fs.facts]
  texts += [e.target_new for e in fs.edits]
  for t in texts:
    words.update(w for w, _ in split.pre_tokenize_str(t.replace("{}", " ")))
  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
  for w in sorted(words):
    vocab.setdefault(w, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tok.pre_tokenizer = split
  return tok


def encode_words(tokenizer: Any, text: str, *, what: str = "text") -> list[int]:
  """Token ids of ``text`` (no special tokens); raises ValueError on unknown words."""
  enc = tokenizer.encode(text, add_special_tokens=False)
  unk = tokenizer.token_to_id(UNK)
  if unk is None:  # a BERT-style vocabulary
    unk = tokenizer.token_to_id("[UNK]")
  if unk is not None and unk in enc.ids:
    words = [w for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    bad = [w for w, i in zip(words, enc.ids) if i == unk]
    raise ValueError(f"{what} {text!r}: the tokenizer cannot encode word(s) {bad}")
  return list(enc.ids)


def build_corpus(fs: FactsSet, tokenizer: Any, *, repeats: int = 8, seed: int = 0,
                 profiles: int = 0) -> np.ndarray:
  """``int32`` token stream: every fact in every phrasing, ``<s>``-separated, shuffled ``repeats``
  times (each pass a new order, so each sentence is seen after varied contexts).

  ``profiles`` > 0 adds, per pass, that many *profile lines* per subject: ``<s> subject o_1 ...
  o_m`` with the subject's objects in a random order. Predicting the next word after the subject
  then needs every object of that subject, so the model stores a subject's facts at the subject's
  last token (as the name-token "knowledge storage" of Allen-Zhu & Li, Physics of LMs 3.1, with
  permuted biographies), which is where ROME/MEMIT read keys (``fact_token='subject_last'``).
  """
  bos = tokenizer.token_to_id(BOS)
  sents = [[bos] + encode_words(tokenizer, sentence(p, f.subject, f.object))
           for f in fs.facts for p in fs.relations[f.relation]]
  by_subject: dict[str, list[list[int]]] = {}
  for f in fs.facts:
    by_subject.setdefault(f.subject, []).append(encode_words(tokenizer, f.object))
  subj = {s: encode_words(tokenizer, s) for s in by_subject}
  rng = np.random.default_rng(seed)
  out: list[int] = []
  for _ in range(repeats):
    rows = list(sents)
    for s, objs in by_subject.items():
      for _ in range(profiles):
        row = [bos] + subj[s]
        for j in rng.permutation(len(objs)):
          row += objs[j]
        rows.append(row)
    for i in rng.permutation(len(rows)):
      out.extend(rows[i])
  return np.asarray(out, np.int32)
