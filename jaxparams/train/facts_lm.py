"""Training the facts LM (a small Llama that knows a facts set) with :mod:`jaxparams.train`.

``facts_lm_config`` is the trainer config (``configs/facts_lm.py`` returns it); the corpus is
every fact in every phrasing of its relation (:func:`jaxparams.edit.facts.build_corpus`) with a
word-level tokenizer. :func:`train_facts_lm` trains (or reuses a finished run in ``workdir``) and
exports an HF checkpoint that :func:`jaxparams.edit.facts_lm.load_facts_lm` reads back. (The
data folder, loading and recall are ``edit``'s; running the trainer is this floor's.)

Example (trains for a minute, so skipped in doctests; tests/edit train a tiny one):
  >>> lm = train_facts_lm('/tmp/facts_lm')  # doctest: +SKIP
  >>> facts_lm.recall(lm)['accuracy'] > 0.99  # doctest: +SKIP
  True
  >>> sorted(SIZES)
  ['default', 'tiny', 'wide', 'xwide']
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections

from jaxparams.edit import facts as facts_lib
from jaxparams.edit import facts_lm
from jaxparams.models import hf
from jaxparams.train import data as data_lib
from jaxparams.train import trainer

__all__ = ["PROFILES", "SIZES", "corpus", "corpus_sentences", "facts_lm_config", "train_facts_lm"]

# Model sizes: name -> (hidden, intermediate, layers, heads, steps, batch, seq_len, lr).
SIZES = {
    "default": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                    num_attention_heads=4, steps=1200, batch_size=32, seq_len=48, lr=3e-3),
    # The 1000-edit set (benchmarks/make_facts_set.py --subjects 1300 ...): 2600 facts, keys
    # 512 wide (d_ff = 4 x hidden, twice the default's), ~40 passes over the corpus.
    "wide": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=4, steps=3000, batch_size=32, seq_len=48, lr=3e-3),
    # Wide enough that 1000 sequential edits at one layer stay below AlphaEdit's null space
    # (keys 2048 wide; issue 24): same set and depth as "wide", fewer passes suffice.
    "xwide": dict(hidden_size=128, intermediate_size=2048, num_hidden_layers=4,
                  num_attention_heads=4, steps=2000, batch_size=32, seq_len=48, lr=3e-3),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, steps=150, batch_size=16, seq_len=24, lr=1e-2),
}

PROFILES = 4


def corpus(data_config: Any, profiles: int = PROFILES):
  """``config.data.corpus`` entry point: the facts corpus of ``data_config.root`` (a folder with
  ``facts.jsonl`` and ``relations.json``; empty = packaged default) with :data:`PROFILES`
  profile lines per subject and pass. Eval = the first pass."""
  fs = facts_lm._load_dir(data_config.root)  # pylint: disable=protected-access
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
  if size not in SIZES:
    raise ValueError(f"unknown facts LM size {size!r}; valid: {', '.join(SIZES)}")
  s = SIZES[size]
  vocab = facts_lib.build_tokenizer(
      facts_lm._load_dir(data_dir)).get_vocab_size()  # pylint: disable=protected-access
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
  c.data.corpus = "jaxparams.train.facts_lm:" + ("corpus" if profiles else "corpus_sentences")
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
                   progress: Any = None) -> facts_lm.FactsLM:
  """Trains the facts LM in ``workdir`` (reusing a finished run there) and exports it to HF.

  Writes ``workdir/data`` (the files and tokenizer), the trainer's checkpoints and
  ``workdir/hf`` (``config.json``, ``model.safetensors``, ``tokenizer.json``).
  """
  workdir = pathlib.Path(workdir)
  data_dir = workdir / "data"
  facts_lm.prepare_data(data_dir, facts, relations, edits)
  config = facts_lm_config(str(data_dir), size=size, steps=steps, seed=seed)
  result = trainer.train(config, workdir / "train", progress=progress)
  hf_dir = workdir / "hf"
  params = jax.device_get(result.params)
  hf.to_hf(params, result.model_config, hf_dir, copy_from=data_dir, overwrite=True)
  return facts_lm.load_facts_lm(hf_dir, data_dir)
