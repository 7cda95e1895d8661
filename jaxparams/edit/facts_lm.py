"""A small Llama that knows the facts of a facts set: its data folder, loading and recall.

The model is trained by :mod:`jaxparams.train.facts_lm` (``train_facts_lm``,
``facts_lm_config``: the trainer is a floor above the areas), which writes the data folder with
:func:`prepare_data` and exports an HF checkpoint (``config.json``, ``model.safetensors``,
``tokenizer.json``) that HF transformers loads; :func:`load_facts_lm` reads it back.

Example (trains for a minute, so skipped in doctests; tests/edit train a tiny one):
  >>> from jaxparams.train.facts_lm import train_facts_lm
  >>> lm = train_facts_lm('/tmp/facts_lm')  # doctest: +SKIP
  >>> recall(lm)['accuracy'] > 0.99  # doctest: +SKIP
  True
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxparams import io as jio
from jaxparams.edit import facts as facts_lib

__all__ = ["FactsLM", "load_facts_lm", "prepare_data", "recall"]

# Moved up to jaxparams.train.facts_lm (they run or configure the trainer).
_MOVED = ("SIZES", "PROFILES", "corpus", "corpus_sentences", "facts_lm_config", "train_facts_lm")


def __getattr__(name: str):
  if name in _MOVED:
    raise AttributeError(f"jaxparams.edit.facts_lm.{name} moved to jaxparams.train.facts_lm.{name} "
                         "(training the facts LM runs jaxparams.train, a floor above edit)")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

@dataclasses.dataclass
class FactsLM:
  """A trained facts LM: Flax module, params, config, tokenizer, facts set and HF folder."""
  module: Any
  params: Any
  config: Any
  tokenizer: Any
  facts: facts_lib.FactsSet
  hf_dir: pathlib.Path | None = None


def prepare_data(out_dir: str | pathlib.Path, facts: Any = None, relations: Any = None,
                 edits: Any = None) -> facts_lib.FactsSet:
  """Copies the facts/relations/edits files (default: packaged) into ``out_dir`` after checking
  them, and writes the tokenizer there; returns the loaded set."""
  fs = facts_lib.load_facts_set(facts, relations, edits)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  d_f, d_r, d_e = facts_lib.default_paths()
  for src, default, name in ((facts, d_f, "facts.jsonl"), (relations, d_r, "relations.json"),
                             (edits, d_e, "edits.jsonl")):
    src = pathlib.Path(src) if src is not None else default
    if not (out / name).exists() or (out / name).read_bytes() != src.read_bytes():
      shutil.copyfile(src, out / name)
  _write_tokenizer(facts_lib.build_tokenizer(fs), out)
  return fs


def _write_tokenizer(tok: Any, folder: pathlib.Path) -> None:
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": facts_lib.BOS,
      "eos_token": facts_lib.EOS, "unk_token": facts_lib.UNK, "pad_token": facts_lib.PAD,
      "add_bos_token": False}, indent=1))


def _load_dir(root: str) -> facts_lib.FactsSet:
  if not root:
    return facts_lib.load_facts_set()
  r = pathlib.Path(root)
  edits = r / "edits.jsonl"
  return facts_lib.load_facts_set(r / "facts.jsonl", r / "relations.json",
                                  edits if edits.exists() else None)


def load_facts_lm(hf_dir: str | pathlib.Path, data_dir: str | pathlib.Path | None = None
                  ) -> FactsLM:
  """Loads an exported facts LM (and its facts set from ``data_dir``, default the packaged)."""
  from jaxparams.models import hf  # pylint: disable=g-import-not-at-top
  hf_dir = pathlib.Path(hf_dir)
  module, params, config = hf.from_hf(hf_dir)
  tok = jio.load_tokenizer_file(hf_dir, vocab_size=config.vocab_size)
  fs = _load_dir(str(data_dir) if data_dir is not None else "")
  return FactsLM(module, params, config, tok, fs, hf_dir)


def recall(lm: FactsLM, params: Any = None, *, prompts: str = "all") -> dict[str, float]:
  """Fraction of facts whose object is the argmax next word after each prompt.

  Args:
    lm: The facts LM.
    params: Params to score (default ``lm.params``).
    prompts: ``'all'`` phrasings or ``'first'`` (edit prompt only).
  """
  from jaxparams.edit import evaluate  # pylint: disable=g-import-not-at-top
  items = []
  for f in lm.facts.facts:
    ps = lm.facts.relations[f.relation]
    for p in (ps if prompts == "all" else ps[:1]):
      items.append((facts_lib.sentence(p, f.subject), f.object))
  ids = evaluate.encode_prompts(lm.tokenizer, [t for t, _ in items])
  objs = np.asarray([lm.tokenizer.token_to_id(o) for _, o in items])
  logits = evaluate.next_logits(lm.module, lm.params if params is None else params, ids)
  return {"accuracy": float(jnp.mean(jnp.argmax(logits, -1) == objs)), "n": len(items)}
