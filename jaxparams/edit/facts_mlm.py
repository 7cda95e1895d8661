"""A small BERT masked LM that knows the facts of a facts set (trained here in minutes on CPU).

The BERT counterpart of :mod:`jaxparams.edit.facts_lm` (all-MiniLM-L6-v2 ships without a
masked-LM head, so editing benchmarks on BERT train their own): a word-level tokenizer with
BERT's special tokens (``[PAD] [UNK] [CLS] [SEP] [MASK]``), so every object is one token; rows
``[CLS] s_1 [SEP] s_2 [SEP] ...`` packing fact sentences ``prompt(subject) object`` (every fact in
every phrasing of its relation; several sentences a row is also the form of context templates)
plus profile rows ``[CLS] subject o_1 .. o_m [SEP]``; objects are masked (always in sentences,
half of them in profiles), other words with probability ``mask_prob`` (dynamic masking, a new
draw per step). A plain optax AdamW loop trains :class:`jaxparams.models.Bert`
with ``mlm_head``; :func:`train_facts_mlm` exports an HF ``BertForMaskedLM`` checkpoint
(``config.json``, ``model.safetensors``, ``tokenizer.json``) and :func:`load_facts_mlm` reads it
back.

Example:
  >>> from jaxparams.edit import facts
  >>> tok = build_tokenizer(facts.load_facts_set())
  >>> tok.encode('Jorah Wexgrave plays the harp').tokens
  ['[CLS]', 'Jorah', 'Wexgrave', 'plays', 'the', 'harp', '[SEP]']
  >>> tok.encode('Jorah Wexgrave plays the [MASK]').tokens[-2]
  '[MASK]'
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxparams import io as jio
from jaxparams.edit import mlm
from jaxparams.edit import sites as arch
from jaxparams.edit import facts as facts_lib
from jaxparams.edit import facts_lm

__all__ = ["FactsMLM", "SIZES", "build_tokenizer", "train_facts_mlm", "load_facts_mlm",
           "recall", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = (arch.PAD, arch.UNK, arch.CLS, arch.SEP, arch.MASK)

# name -> model and training sizes.
SIZES = {
    "default": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                    num_attention_heads=4, steps=1500, batch_size=64, lr=3e-3),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, steps=200, batch_size=32, lr=5e-3),
}


# A trained facts BERT-MLM has the fields of a facts LM (module, params, config, tokenizer, facts,
# hf_dir).
FactsMLM = facts_lm.FactsLM


def build_tokenizer(fs: facts_lib.FactsSet) -> Any:
  """Word-level tokenizer over every word of the facts set with BERT's special tokens and a
  ``[CLS] $A [SEP]`` post-processor (so HF tokenizers add them as BERT's do)."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top
  base = facts_lib.build_tokenizer(fs)
  words = sorted(w for w in base.get_vocab() if w not in facts_lib.SPECIAL_TOKENS)
  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
  for w in words:
    vocab.setdefault(w, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab, unk_token=arch.UNK))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(list(SPECIAL_TOKENS))  # "[MASK]" in a text is the mask token
  tok.post_processor = processors.TemplateProcessing(
      single=f"{arch.CLS} $A {arch.SEP}", pair=f"{arch.CLS} $A {arch.SEP} $B {arch.SEP}",
      special_tokens=[(arch.CLS, vocab[arch.CLS]), (arch.SEP, vocab[arch.SEP])])
  return tok


def _sentences(fs: facts_lib.FactsSet, tok: Any) -> list[tuple[list[int], list[int]]]:
  """``(prompt ids, object ids)`` of every fact in every phrasing."""
  out = []
  for f in fs.facts:
    obj = facts_lib.encode_words(tok, f.object, what="object")
    for p in fs.relations[f.relation]:
      out.append((facts_lib.encode_words(tok, facts_lib.sentence(p, f.subject), what="prompt"),
                  obj))
  return out


def _profiles(fs: facts_lib.FactsSet, tok: Any) -> list[tuple[list[int], list[list[int]]]]:
  """``(subject ids, [object ids...])`` per subject (the profile rows)."""
  by: dict[str, list[list[int]]] = {}
  for f in fs.facts:
    by.setdefault(f.subject, []).append(facts_lib.encode_words(tok, f.object, what="object"))
  return [(facts_lib.encode_words(tok, s_, what="subject"), objs) for s_, objs in by.items()]


def _batch(rng: np.random.Generator, sents, profiles, tok, batch_size: int, seq_len: int,
           mask_prob: float, profile_prob: float) -> tuple[np.ndarray, ...]:
  """Rows of packed fact sentences ``[CLS] s_1 [SEP] s_2 [SEP] ...`` (every object masked,
  other words with ``mask_prob``) or, with ``profile_prob``, a profile row ``[CLS] subject o_1
  .. o_m [SEP]`` (objects in a random order, half of them masked: the masked-LM form of the
  facts LM's profile lines, so a subject's facts are stored at its tokens)."""
  cls, sep, msk = (tok.token_to_id(t) for t in (arch.CLS, arch.SEP, arch.MASK))
  ids = np.zeros((batch_size, seq_len), np.int32)
  att = np.zeros_like(ids)
  labels = np.zeros_like(ids)
  weights = np.zeros((batch_size, seq_len), np.float32)
  for b in range(batch_size):
    row, target = [cls], [False]
    if profiles and rng.random() < profile_prob:
      subj, objs = profiles[rng.integers(0, len(profiles))]
      row += subj
      target += [False] * len(subj)
      for j in rng.permutation(len(objs)):
        row += objs[j]
        target += [bool(rng.random() < 0.5)] * len(objs[j])
      row, target = row[:seq_len - 1] + [sep], target[:seq_len - 1] + [False]
    else:
      while True:
        prompt, obj = sents[rng.integers(0, len(sents))]
        if len(row) + len(prompt) + len(obj) + 1 > seq_len and len(row) > 1:
          break
        row += prompt + obj + [sep]
        target += [False] * len(prompt) + [True] * len(obj) + [False]
        row, target = row[:seq_len], target[:seq_len]
    for j in range(1, len(row)):
      if row[j] in (cls, sep):
        continue
      if target[j] or rng.random() < mask_prob:
        labels[b, j], weights[b, j] = row[j], 1.0
        row[j] = msk
    ids[b, :len(row)] = row
    att[b, :len(row)] = 1
  return ids, att, labels, weights


def model_config(tokenizer: Any, size: str = "default", seq_len: int = 32) -> Any:
  """The :class:`jaxparams.models.BertConfig` (with ``mlm_head``) of a facts BERT-MLM size."""
  from jaxparams.models import BertConfig  # pylint: disable=g-import-not-at-top
  if size not in SIZES:
    raise ValueError(f"unknown facts MLM size {size!r}; valid: {', '.join(SIZES)}")
  s = SIZES[size]
  return BertConfig(vocab_size=-(-tokenizer.get_vocab_size() // 8) * 8,
                    hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
                    num_hidden_layers=s["num_hidden_layers"],
                    num_attention_heads=s["num_attention_heads"],
                    max_position_embeddings=seq_len, mlm_head=True, add_pooling_layer=False)


def train_facts_mlm(workdir: str | pathlib.Path, facts: Any = None, relations: Any = None,
                    edits: Any = None, *, size: str = "default", steps: int = 0, seed: int = 0,
                    seq_len: int = 32, mask_prob: float = 0.1, profile_prob: float = 0.25,
                    weight_decay: float = 0.01, log_every: int = 250) -> FactsMLM:
  """Trains the facts BERT-MLM (reusing ``workdir/hf`` when it exists) and exports it.

  Writes ``workdir/data`` (the facts files) and ``workdir/hf`` (an HF ``BertForMaskedLM``
  checkpoint with ``tokenizer.json``).
  """
  from jaxparams.models import Bert, to_hf  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  hf_dir, data_dir = workdir / "hf", workdir / "data"
  if (hf_dir / "model.safetensors").is_file():
    return load_facts_mlm(hf_dir, data_dir)
  fs = facts_lm.prepare_data(data_dir, facts, relations, edits)
  tok = build_tokenizer(fs)
  cfg = model_config(tok, size, seq_len)
  module = Bert(cfg)
  s = SIZES[size]
  n_steps = steps or s["steps"]
  params = module.init(jax.random.key(seed), jnp.zeros((1, seq_len), jnp.int32))["params"]
  sched = optax.warmup_cosine_decay_schedule(0.0, s["lr"], min(100, n_steps // 10), n_steps,
                                             s["lr"] * 0.05)
  opt = optax.adamw(sched, weight_decay=weight_decay)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, ids, att, labels, w):
    def loss_fn(p):
      logits = module.apply({"params": p}, ids, attention_mask=att)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)
    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, upd), opt_state, loss

  sents, profiles = _sentences(fs, tok), _profiles(fs, tok)
  rng = np.random.default_rng(seed)
  t0 = time.perf_counter()
  for i in range(n_steps):
    batch = _batch(rng, sents, profiles, tok, s["batch_size"], seq_len, mask_prob, profile_prob)
    params, opt_state, loss = step(params, opt_state, *map(jnp.asarray, batch))
    if log_every and (i % log_every == 0 or i == n_steps - 1):
      print(f"facts MLM step {i}: loss {float(loss):.4f} ({time.perf_counter() - t0:.0f} s)",
            flush=True)
  to_hf(jax.device_get(params), cfg, hf_dir, overwrite=True)
  tok.save(str(hf_dir / "tokenizer.json"))
  (hf_dir / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "cls_token": arch.CLS,
      "sep_token": arch.SEP, "mask_token": arch.MASK, "unk_token": arch.UNK,
      "pad_token": arch.PAD}, indent=1))
  return load_facts_mlm(hf_dir, data_dir)


def load_facts_mlm(hf_dir: str | pathlib.Path, data_dir: str | pathlib.Path | None = None
                   ) -> FactsMLM:
  """Loads an exported facts BERT-MLM (and its facts set from ``data_dir``, default the
  packaged one)."""
  from jaxparams.models import from_hf  # pylint: disable=g-import-not-at-top
  hf_dir = pathlib.Path(hf_dir)
  module, params, config = from_hf(hf_dir)
  if not config.mlm_head:
    raise ValueError(f"{hf_dir}: not a masked-LM checkpoint (no cls.predictions head)")
  tok = jio.load_tokenizer_file(hf_dir, vocab_size=config.vocab_size)
  fs = facts_lm._load_dir(str(data_dir) if data_dir is not None else "")  # pylint: disable=protected-access
  return FactsMLM(module, params, config, tok, fs, hf_dir)


@functools.partial(jax.jit, static_argnums=0)
def _argmax_at(module, params, ids, att, pos):
  logits = module.apply({"params": params}, ids, attention_mask=att)
  return jnp.argmax(jnp.take_along_axis(logits, pos[:, None, None], 1)[:, 0], -1)


def recall(lm: FactsMLM, params: Any = None, *, prompts: str = "all") -> dict[str, float]:
  """Fraction of (single-token) facts whose object is the argmax at the ``[MASK]`` after each
  prompt (``prompts``: ``'all'`` phrasings or ``'first'``)."""
  from jaxparams.edit import requests as req_lib  # pylint: disable=g-import-not-at-top
  rows, pos, objs = [], [], []
  for f in lm.facts.facts:
    obj = facts_lib.encode_words(lm.tokenizer, f.object, what="object")
    if len(obj) != 1:
      continue
    ps = lm.facts.relations[f.relation]
    for p in (ps if prompts == "all" else ps[:1]):
      ids, _, mp, _ = mlm.encode_request_mlm(
          lm.tokenizer, req_lib.EditRequest(p, f.subject, f.object), "{}")
      rows.append(ids), pos.append(mp[0]), objs.append(obj[0])
  t = -(-max(len(r) for r in rows) // 8) * 8
  ids = np.zeros((len(rows), t), np.int32)
  att = np.zeros_like(ids)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
    att[i, :len(r)] = 1
  am = _argmax_at(lm.module, lm.params if params is None else params, jnp.asarray(ids),
                  jnp.asarray(att), jnp.asarray(pos, jnp.int32))
  return {"accuracy": float(np.mean(np.asarray(am) == np.asarray(objs))), "n": len(rows)}
