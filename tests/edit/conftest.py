"""A tiny facts LM (4 subjects x 6 relations) trained for seconds, shared by the edit tests."""

import json

import pytest

from jaxparams.edit import facts, facts_lm
from jaxparams.train.facts_lm import train_facts_lm


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("facts")
  fs = facts.load_facts_set()
  subjects = sorted({f.subject for f in fs.facts})[:4]
  rows = [f for f in fs.facts if f.subject in subjects]
  (d / "facts.jsonl").write_text("".join(json.dumps(f.__dict__) + "\n" for f in rows))
  (d / "relations.json").write_text(json.dumps({r: {"prompts": list(p)} for r, p in
                                                fs.relations.items()}))
  edits = [{"subject": rows[0].subject, "relation": rows[0].relation,
            "target_new": next(o.object for o in fs.facts if o.relation == rows[0].relation
                               and o.object != rows[0].object)}]
  (d / "edits.jsonl").write_text("".join(json.dumps(e) + "\n" for e in edits))
  return d / "facts.jsonl", d / "relations.json", d / "edits.jsonl"


@pytest.fixture(scope="session")
def tiny_lm(tiny_files, tmp_path_factory):
  return train_facts_lm(tmp_path_factory.mktemp("lm"), *tiny_files, size="tiny",
                                 steps=500)
