"""``jaxparams -v/-vv/-q``: library loggers shown on stderr, or everything but errors silenced."""

import logging
import re

import pytest

from jaxparams.cli.main import main
from jaxparams.demo.tiny_llama import llama_config, write_llama

CFG = llama_config(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4)


@pytest.fixture
def recipe(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("JAXPARAMS_COMPILE_CACHE", "none")
  write_llama(tmp_path / "base", cfg=CFG, seed=0)
  write_llama(tmp_path / "ft", like=tmp_path / "base", noise=0.1, seed=3)
  (tmp_path / "r.yml").write_text("merge_method: task_arithmetic\nbase_model: ./base\n"
                                  "models:\n  - model: ./ft\n    parameters: {weight: 0.5}\n")
  return "r.yml"


def test_verbose_shows_main_steps_and_vv_every_tensor(recipe, capsys):
  level = logging.getLogger("jaxparams").level
  assert main(["-v", "merge", recipe, "o1"]) == 0
  err = capsys.readouterr().err
  assert "jaxparams.merge.stream: r.yml: task_arithmetic merge of " in err
  assert re.search(r"jaxparams\.io\.safetensors_writer: o1: (writing|wrote) shard 1 \(", err), err
  assert "model.layers.1.mlp.down_proj.weight" not in err  # per tensor only at DEBUG
  assert main(["-vv", "merge", recipe, "o2"]) == 0
  err = capsys.readouterr().err
  assert ("jaxparams.transform.stream_driver: r.yml: model.layers.1.mlp.down_proj.weight: "
          "task_arithmetic from 2 inputs") in err
  assert "jaxparams.transform.prefetch: reading tensor model.norm.weight (" in err
  assert logging.getLogger("jaxparams").level == level  # restored after the command


def test_default_has_summary_but_no_log_lines(recipe, capsys):
  assert main(["merge", recipe, "o"]) == 0
  err = capsys.readouterr().err
  assert "merged" in err and "jaxparams.merge.stream:" not in err


def test_quiet_silences_normal_output(recipe, capsys):
  assert main(["-q", "merge", recipe, "o", "--cuda"]) == 0
  out, err = capsys.readouterr()
  assert out == "" and err == ""
  assert main(["-q", "merge", recipe, "o"]) == 2  # errors still shown
  assert "jaxparams merge: error: o: output folder already exists" in capsys.readouterr().err
