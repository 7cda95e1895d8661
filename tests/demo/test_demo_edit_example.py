"""The README's ``jaxparams edit`` line runs, verbatim, on ``jaxparams demo --example ex``.

The example's facts LM (shipped in the package) is edited with ROME by the command line; the
printed table and the written checkpoint show that the edit took: on the edit prompt the new
city is now the model's answer (scored here independently of the CLI's table, from the edited
checkpoint on disk), and the delta rolls back bit-exactly.
"""

import pathlib
import re
import shlex

import numpy as np
import pytest

import jaxparams as jp
from jaxparams.cli.main import main
from jaxparams.demo import facts_example

README = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()


def _readme_line(prefix: str) -> str:
  lines = [l.split("  #")[0].strip() for l in README.splitlines() if l.startswith(prefix)]
  assert len(lines) == 1, lines
  return lines[0]


# ~30 CPU-seconds (ROME's compile and the key statistics of a real checkpoint through the CLI):
# the one end-to-end check that the README's first edit works; kept slow.
@pytest.mark.slow
def test_readme_edit_line_edits_the_example(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert main(shlex.split(_readme_line("jaxparams demo --example "))[1:]) == 0
  assert "jaxparams edit ex/facts-lm" in capsys.readouterr().out
  assert main(shlex.split(_readme_line("jaxparams edit "))[1:]) == 0
  out = capsys.readouterr().out
  req = facts_example.edit_request()
  assert f"new {req['target_new']!r}, old {req['ground_truth']!r}" in out  # the file's old answer
  assert re.search(r"paraphrase\s+The home town of", out)  # the request's rephrase_prompt
  # The edited checkpoint, scored independently of the printed table.
  from jaxparams.edit import evaluate
  from jaxparams.models.hf_open import hf_tokenizer
  module, edited, _ = jp.models.from_hf(tmp_path / "out" / "edited")
  _, orig, _ = jp.models.from_hf(tmp_path / "ex" / "facts-lm")
  tok = hf_tokenizer(tmp_path / "ex" / "facts-lm", purpose="test")
  prompt = req["prompt"].replace("{}", req["subject"])
  for params, want in ((orig, req["ground_truth"]), (edited, req["target_new"])):
    logits = evaluate.next_logits(module, params, evaluate.encode_prompts(tok, [prompt]))
    assert tok.id_to_token(int(np.argmax(np.asarray(logits[0])))) == want
  # only the edited layer's MLP output kernel moved
  a, b = jp.tree.flatten(orig), jp.tree.flatten(edited)
  moved = [p for p in a if not np.array_equal(np.asarray(a[p]), np.asarray(b[p]))]
  assert moved == [f"layers_{facts_example.EDIT_LAYER}/mlp/down_proj/kernel"]


def test_example_holds_an_editable_lm_that_knows_its_facts(tmp_path):
  """Fast: the folder's files load with the project's readers, and the model recalls every fact
  (every phrasing) of the set it was trained on, so an edit has something to change."""
  from jaxparams.demo import write_example
  from jaxparams.edit import facts, facts_lm
  from jaxparams.edit import requests as req_lib
  from jaxparams.models.hf_open import hf_tokenizer
  ex = write_example(tmp_path / "ex")
  tok = hf_tokenizer(ex / "facts-lm", purpose="test")
  (req,) = req_lib.read_requests(ex / "requests.jsonl", tok)
  lines = (ex / "stats.txt").read_text().splitlines()
  assert lines and all(facts.encode_words(tok, l) for l in lines)
  assert not any(req.subject in l for l in lines)  # statistics from the other people only
  lm = facts_lm.load_facts_lm(ex / "facts-lm")
  fs = facts_example.facts_subset()
  import dataclasses
  got = facts_lm.recall(dataclasses.replace(lm, facts=fs))
  assert got == {"accuracy": 1.0, "n": 4 * len(fs.facts)}
  assert fs.object_of(req.subject, "city") != req.target_new
