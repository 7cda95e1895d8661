"""The editable example: a small facts LM shipped with the package, its requests and statistics.

``jaxparams demo --example DIR`` writes, beside the merge example, ``DIR/facts-lm`` (an HF
``LlamaForCausalLM`` folder with ``tokenizer.json``: the small facts LM below),
``DIR/requests.jsonl`` (one EasyEdit-style edit of one of its facts) and ``DIR/stats.txt`` (the
facts of the other subjects, one sentence a line: the text the key statistics ``C = E[k k^T]``
are computed from), so a first knowledge edit runs in one line::

  jaxparams edit DIR/facts-lm DIR/requests.jsonl out/edited --layers 0 --stats-text DIR/stats.txt

The model (``jaxparams/demo/data/facts_lm``, ~0.6 MB) is a 2-layer Llama (hidden 64, d_ff 256)
trained by :func:`train` on the facts of :data:`N_SUBJECTS` invented people from the packaged
facts set (6 relations each, every phrasing, with profile lines so that each person's facts are
stored at the last token of their name, where ROME reads its key); it recalls all of them.
``python -m jaxparams.demo.facts_example`` retrains it into the package (about a minute).

Example:
  >>> import os, tempfile
  >>> d = write_facts_example(os.path.join(tempfile.mkdtemp(), 'fx'))
  >>> sorted(os.listdir(d)), sorted(os.listdir(d / 'facts-lm'))[:2]
  (['facts-lm', 'requests.jsonl', 'stats.txt'], ['config.json', 'model.safetensors'])
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

from jaxparams.edit import facts as facts_lib

__all__ = ["MODEL_DIR", "N_SUBJECTS", "EDIT_LAYER", "PARAPHRASE", "facts_subset", "edit_request",
           "stats_lines", "write_facts_example", "train"]

#: The shipped model folder (config.json, model.safetensors, tokenizer.json, the facts files).
MODEL_DIR = pathlib.Path(__file__).resolve().parent / "data" / "facts_lm"
#: Invented people whose facts the model knows.
N_SUBJECTS = 8
#: The edited MLP (its down projection): the first of the two layers, as ROME's early-middle
#: layer; the model stores a person's facts at the last token of the name by then.
EDIT_LAYER = 0
#: The paraphrase of the example's edit prompt (the relation's second phrasing).
PARAPHRASE_INDEX = 1
PARAPHRASE = "The home town of {} is"
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def facts_subset() -> facts_lib.FactsSet:
  """The facts of the first :data:`N_SUBJECTS` people of the packaged set, with one edit: the
  first person's city becomes another person's city."""
  fs = facts_lib.load_facts_set()
  subjects = sorted({f.subject for f in fs.facts})[:N_SUBJECTS]
  rows = tuple(f for f in fs.facts if f.subject in subjects)
  first = next(f for f in rows if f.relation == "city")
  target = sorted({f.object for f in rows if f.relation == "city"} - {first.object})[0]
  return facts_lib.FactsSet(rows, dict(fs.relations),
                            (facts_lib.Edit(first.subject, first.relation, target),))


def edit_request(fs: facts_lib.FactsSet | None = None) -> dict[str, str]:
  """The example's request (EasyEdit's fields; ``rephrase_prompt`` is the paraphrase)."""
  fs = fs or facts_subset()
  e = fs.edits[0]
  prompts = fs.relations[e.relation]
  return {"prompt": prompts[0], "subject": e.subject, "target_new": e.target_new,
          "ground_truth": fs.object_of(e.subject, e.relation),
          "rephrase_prompt": prompts[PARAPHRASE_INDEX]}


def stats_lines(fs: facts_lib.FactsSet | None = None) -> list[str]:
  """Sentences for the key statistics: every fact of the people the edit does not name."""
  fs = fs or facts_subset()
  return facts_lib.stats_sentences(fs, "other_subjects")


def write_facts_example(out_dir: str | pathlib.Path) -> pathlib.Path:
  """Writes ``facts-lm/``, ``requests.jsonl`` and ``stats.txt`` into ``out_dir`` (created)."""
  out = pathlib.Path(out_dir)
  (out / "facts-lm").mkdir(parents=True, exist_ok=True)
  for name in _FILES:
    shutil.copyfile(MODEL_DIR / name, out / "facts-lm" / name)
  fs = facts_subset()
  (out / "requests.jsonl").write_text(json.dumps(edit_request(fs)) + "\n")
  (out / "stats.txt").write_text("\n".join(stats_lines(fs)) + "\n")
  return out


def _write_set(fs: facts_lib.FactsSet, folder: pathlib.Path) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "facts.jsonl").write_text("".join(
      json.dumps({"subject": f.subject, "relation": f.relation, "object": f.object}) + "\n"
      for f in fs.facts))
  (folder / "relations.json").write_text(json.dumps(
      {r: {"prompts": list(p)} for r, p in fs.relations.items()}, indent=1))
  (folder / "edits.jsonl").write_text("".join(
      json.dumps({"subject": e.subject, "relation": e.relation, "target_new": e.target_new})
      + "\n" for e in fs.edits))


def train(workdir: str | pathlib.Path, *, steps: int = 600, seed: int = 0,
          progress: Any = None) -> pathlib.Path:
  """Trains the example's facts LM in ``workdir`` and exports it to ``workdir/hf``.

  The trainer of :mod:`jaxparams.train.facts_lm` with a 2-layer Llama, hidden 64, d_ff 256, 4
  heads, batch 16 x 32 tokens, AdamW lr 5e-3, ``steps`` updates.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from jaxparams.edit import facts_lm
  from jaxparams.models import hf
  from jaxparams.train import trainer
  from jaxparams.train.facts_lm import facts_lm_config
  workdir = pathlib.Path(workdir)
  src = workdir / "set"
  _write_set(facts_subset(), src)
  data = workdir / "data"
  facts_lm.prepare_data(data, src / "facts.jsonl", src / "relations.json", src / "edits.jsonl")
  c = facts_lm_config(str(data), size="tiny", steps=steps, seed=seed)
  c.model.hidden_size, c.model.intermediate_size = 64, 256
  c.model.num_hidden_layers, c.model.num_attention_heads = 2, 4
  c.batch_size = c.eval_batch_size = 16
  c.seq_len = 32
  c.model.max_position_embeddings = 128
  c.optim.lr = 5e-3
  c.log_every = max(1, steps // 10)
  result = trainer.train(c, workdir / "train", progress=progress)
  hf_dir = workdir / "hf"
  hf.to_hf(jax.device_get(result.params), result.model_config, hf_dir, copy_from=data,
           overwrite=True)
  return hf_dir


def _rebuild() -> None:  # pragma: no cover - run by hand to refresh the shipped model
  import tempfile  # pylint: disable=g-import-not-at-top
  from jaxparams.edit import facts_lm  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = train(tmp, progress=lambda r: print(r) if r.get("event") == "train" else None)
    lm = facts_lm.load_facts_lm(hf_dir, pathlib.Path(tmp) / "data")
    print("recall", facts_lm.recall(lm))
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    for name in _FILES:
      shutil.copyfile(hf_dir / name, MODEL_DIR / name)
  print(f"wrote {MODEL_DIR}")


if __name__ == "__main__":
  _rebuild()
