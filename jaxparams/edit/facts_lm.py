"""A small Llama that knows the facts of a facts set, trained here with ``jaxparams.train``.

``facts_lm_config`` is the trainer config (``configs/facts_lm.py`` returns it); the corpus is
every fact in every phrasing of its relation (:func:`jaxparams.edit.facts.build_corpus`) with a
word-level tokenizer. :func:`train_facts_lm` trains (or reuses a finished run in ``workdir``) and
exports an HF checkpoint (``config.json``, ``model.safetensors``, ``tokenizer.json``) that HF
transformers loads; :func:`load_facts_lm` reads it back.

Example (trains for a minute, so skipped in doctests; tests/edit train a tiny one):
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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxparams.edit import facts as facts_lib

__all__ = ["FactsLM", "facts_lm_config", "corpus", "train_facts_lm", "load_facts_lm",
           "prepare_data", "recall", "SIZES"]

# Model sizes: name -> (hidden, intermediate, layers, heads, steps, batch, seq_len, lr).
SIZES = {
    "default": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                    num_attention_heads=4, steps=1200, batch_size=32, seq_len=48, lr=3e-3),
    # The 1000-edit set (benchmarks/make_facts_set.py --subjects 1300 ...): 2600 facts, keys
    # 512 wide (d_ff = 4 x hidden, twice the default's), ~40 passes over the corpus.
    "wide": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=4, steps=3000, batch_size=32, seq_len=48, lr=3e-3),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, steps=150, batch_size=16, seq_len=24, lr=1e-2),
}


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


PROFILES = 4


def corpus(data_config: Any, profiles: int = PROFILES):
  """``config.data.corpus`` entry point: the facts corpus of ``data_config.root`` (a folder with
  ``facts.jsonl`` and ``relations.json``; empty = packaged default) with :data:`PROFILES`
  profile lines per subject and pass. Eval = the first pass."""
  from jaxparams.train import data as data_lib  # pylint: disable=g-import-not-at-top
  fs = _load_dir(data_config.root)
  tok = facts_lib.build_tokenizer(fs)
  stream = facts_lib.build_corpus(fs, tok, repeats=8, profiles=profiles)
  one = stream[: stream.size // 8]
  return data_lib.Corpus(train=stream, eval=one, train_files=("facts",), eval_files=("facts",))


def corpus_sentences(data_config: Any):
  """As :func:`corpus` without profile lines (fact sentences only)."""
  return corpus(data_config, profiles=0)


def facts_lm_config(data_dir: str = "", *, size: str = "default", steps: int = 0,
                    seed: int = 0, profiles: bool = True,
                    weight_decay: float = 0.1) -> ml_collections.ConfigDict:
  """Trainer config of the facts LM for the facts set in ``data_dir`` ('' = packaged default).

  Args:
    data_dir: Folder with ``facts.jsonl`` and ``relations.json``.
    size: A key of :data:`SIZES` (``'default'``: 4 layers, hidden 128; ``'tiny'`` for tests).
    steps: Number of updates (0: the size's default).
    seed: Trainer seed.
    profiles: Add :data:`PROFILES` profile lines per subject and pass
      (:func:`jaxparams.edit.facts.build_corpus`): they make the model store a subject's facts
      at the subject's last token, where ROME/MEMIT edit; False = fact sentences only.
    weight_decay: AdamW weight decay (0.1 as LM pretraining; keeps the model from growing
      logits without bound on a corpus it memorises).
  """
  from jaxparams.train import trainer  # pylint: disable=g-import-not-at-top
  if size not in SIZES:
    raise ValueError(f"unknown facts LM size {size!r}; valid: {', '.join(SIZES)}")
  s = SIZES[size]
  vocab = facts_lib.build_tokenizer(_load_dir(data_dir)).get_vocab_size()
  c = trainer.default_config()
  c.seed = seed
  c.num_steps = steps or s["steps"]
  c.batch_size = s["batch_size"]
  c.eval_batch_size = s["batch_size"]
  c.seq_len = s["seq_len"]
  c.eval_every = 0
  c.log_every = 50
  c.checkpoint_every = c.num_steps
  c.keep_checkpoints = 1
  c.plot = False
  c.data.root = str(data_dir)
  c.data.corpus = "jaxparams.edit.facts_lm:" + ("corpus" if profiles else "corpus_sentences")
  c.optim.lr = s["lr"]
  c.optim.warmup_steps = min(100, c.num_steps // 10)
  c.optim.weight_decay = float(weight_decay)
  c.optim.end_lr_ratio = 0.05
  c.model = ml_collections.ConfigDict(dict(
      name="llama", vocab_size=-(-vocab // 8) * 8, hidden_size=s["hidden_size"],
      intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_hidden_layers"],
      num_attention_heads=s["num_attention_heads"], max_position_embeddings=s["seq_len"] * 4,
      bos_token_id=1, eos_token_id=2, pad_token_id=0))
  return c


def train_facts_lm(workdir: str | pathlib.Path, facts: Any = None, relations: Any = None,
                   edits: Any = None, *, size: str = "default", steps: int = 0, seed: int = 0,
                   progress: Any = None) -> FactsLM:
  """Trains the facts LM in ``workdir`` (reusing a finished run there) and exports it to HF.

  Writes ``workdir/data`` (the files and tokenizer), the trainer's checkpoints and
  ``workdir/hf`` (``config.json``, ``model.safetensors``, ``tokenizer.json``).
  """
  from jaxparams.models import hf  # pylint: disable=g-import-not-at-top
  from jaxparams.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  data_dir = workdir / "data"
  prepare_data(data_dir, facts, relations, edits)
  config = facts_lm_config(str(data_dir), size=size, steps=steps, seed=seed)
  result = trainer.train(config, workdir / "train", progress=progress)
  hf_dir = workdir / "hf"
  params = jax.device_get(result.params)
  hf.to_hf(params, result.model_config, hf_dir, copy_from=data_dir, overwrite=True)
  return load_facts_lm(hf_dir, data_dir)


def load_facts_lm(hf_dir: str | pathlib.Path, data_dir: str | pathlib.Path | None = None
                  ) -> FactsLM:
  """Loads an exported facts LM (and its facts set from ``data_dir``, default the packaged)."""
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  from jaxparams.models import hf  # pylint: disable=g-import-not-at-top
  hf_dir = pathlib.Path(hf_dir)
  module, params, config = hf.from_hf(hf_dir)
  tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
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
