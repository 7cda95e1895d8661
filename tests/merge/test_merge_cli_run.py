"""``jaxparams merge RECIPE.yml OUT_DIR`` on a mergekit YAML with relative paths."""

import argparse

import numpy as np

from jaxparams.cli import common as cli_common
from jaxparams.cli import merge as cli_merge
from jaxparams.io import load_safetensors
from jaxparams.demo.tiny_llama import llama_config, write_llama

CFG = llama_config(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4)

YAML = """\
merge_method: task_arithmetic
base_model: ./base
models:
  - model: ./ft
    parameters:
      weight: 0.5
dtype: float32
"""


def test_cli_merges_mergekit_yaml_and_refuses_existing_output(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("JAXPARAMS_COMPILE_CACHE", "none")  # keep the session's jax config as is
  write_llama(tmp_path / "base", cfg=CFG, seed=0)
  write_llama(tmp_path / "ft", like=tmp_path / "base", noise=0.1, seed=3)
  (tmp_path / "ta.yml").write_text(YAML)
  assert cli_merge.main(["ta.yml", "merged", "--quiet", "--max-shard-size", "1M"]) == 0
  got = load_safetensors(tmp_path / "merged")
  base, ft = load_safetensors(tmp_path / "base"), load_safetensors(tmp_path / "ft")
  for k in base:
    np.testing.assert_allclose(got[k], base[k] + 0.5 * (ft[k] - base[k]), atol=1e-6)
  assert (tmp_path / "merged" / "config.json").is_file()

  assert cli_merge.main(["ta.yml", "planned", "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "model.layers.1.mlp.down_proj.weight" in out and "weight=[0.5]" in out
  assert not (tmp_path / "planned").exists()

  assert cli_merge.main(["ta.yml", "merged", "--quiet"]) == 2
  assert "merged: output folder already exists; pass overwrite=True (--overwrite)" in (
      capsys.readouterr().err)
  assert cli_merge.main(["ta.yml", "merged", "--quiet", "--overwrite"]) == 0

  (tmp_path / "bad.yml").write_text(YAML.replace("task_arithmetic", "tiez"))
  assert cli_merge.main(["bad.yml", "other", "--quiet"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxparams merge: error: unknown merge method 'tiez'; valid methods:")
  assert not (tmp_path / "other").exists()


def test_add_parser_sets_func_and_options():
  p = argparse.ArgumentParser()
  sub = p.add_subparsers(dest="command")
  cli_merge.add_parser(sub)
  args = p.parse_args(["merge", "r.yml", "out", "--overwrite", "--seed", "5",
                       "--out-shard-size", "500M", "--no-copy-tokenizer"])
  assert args.func is cli_merge.run
  assert (args.overwrite, args.seed, args.max_shard_size, args.copy_tokenizer) == (
      True, 5, "500M", False)
  assert cli_common.enable_compile_cache("none") is None


def test_mergekit_flags_model_card_and_recipe_written(tmp_path, monkeypatch, capsys):
  # issue 9: a pasted mergekit command runs; the output has README.md + mergekit_config.yml
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("JAXPARAMS_COMPILE_CACHE", "none")
  write_llama(tmp_path / "base", cfg=CFG, seed=0)
  write_llama(tmp_path / "ft", like=tmp_path / "base", noise=0.1, seed=3)
  (tmp_path / "ta.yml").write_text(YAML)
  flags = ["--cuda", "--copy-tokenizer", "--lazy-unpickle", "--allow-crimes",
           "--trust-remote-code", "--write-model-card", "--low-cpu-memory"]
  assert cli_merge.main(["ta.yml", "merged", "--quiet"] + flags) == 0
  err = capsys.readouterr().err
  for flag in ("--cuda", "--lazy-unpickle", "--allow-crimes", "--trust-remote-code",
               "--low-cpu-memory"):
    assert f"note: {flag}:" in err
  assert (tmp_path / "merged" / "mergekit_config.yml").read_text() == YAML
  card = (tmp_path / "merged" / "README.md").read_text()
  assert card.startswith("---\nbase_model: []\nlibrary_name: transformers\ntags:\n- mergekit\n"
                         "- merge\n---\n# merged\n")
  assert "merged using the [Task Arithmetic](https://arxiv.org/abs/2212.04089) merge method " \
         "using ./base as a base." in card
  assert "* ./ft" in card and "```yaml\n" + YAML + "```" in card
  assert cli_merge.main(["ta.yml", "nocard", "--quiet", "--no-write-model-card"]) == 0
  assert not (tmp_path / "nocard" / "README.md").exists()
  assert not (tmp_path / "nocard" / "mergekit_config.yml").exists()
