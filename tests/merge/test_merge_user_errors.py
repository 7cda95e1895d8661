"""Merge errors a new user meets first: one size parser, bad recipe text/values, bad base config,
output folder checked before any tensor is read (issue 9, issue 10 item 11)."""

import numpy as np
import pytest

import jaxparams as jp
from jaxparams.cli import merge as cli_merge
from jaxparams.demo.tiny_llama import llama_config, write_llama
from jaxparams.merge import stream as merge_stream
from jaxparams.merge.stream import merge_checkpoints

CFG = llama_config(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  d = tmp_path_factory.mktemp("models")
  write_llama(d / "base", cfg=CFG, seed=0)
  write_llama(d / "ft", like=d / "base", noise=0.1, seed=3)
  return d


def _recipe(d, weight=0.5, base="base"):
  return {"merge_method": "task_arithmetic", "base_model": str(d / base),
          "models": [{"model": str(d / "ft"), "parameters": {"weight": weight}}]}


def _no_merging(monkeypatch):
  def refuse(*a, **k):
    raise AssertionError("a tensor was merged before the input error was found")
  monkeypatch.setattr(merge_stream, "stream_checkpoints", refuse)


def test_one_size_parser_for_convert_and_merge(models, tmp_path, monkeypatch, capsys):
  assert jp.merge.parse_size is jp.io.parse_size
  assert jp.merge.parse_size("2GiB") == 2**31 and jp.merge.parse_size("5GB") == 5 * 10**9
  monkeypatch.setenv("JAXPARAMS_COMPILE_CACHE", "none")
  (tmp_path / "r.yml").write_text(
      f"merge_method: linear\nmodels:\n  - model: {models / 'ft'}\n    parameters: {{weight: 1}}\n")
  _no_merging(monkeypatch)
  assert cli_merge.main([str(tmp_path / "r.yml"), str(tmp_path / "o"), "--quiet",
                         "--max-shard-size", "inf"]) == 2
  assert "--max-shard-size: invalid size 'inf'" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


def test_non_utf8_recipe_is_one_clear_error(tmp_path, capsys):
  rec = tmp_path / "r.yml"
  rec.write_bytes(b"merge_method: linear\n# caf\xe9\n")
  with pytest.raises(ValueError, match=r"r\.yml: recipe is not valid UTF-8 text \(byte 26 is 0xe9\)"):
    jp.merge.load_recipe(rec)
  assert cli_merge.main([str(rec), str(tmp_path / "o"), "--quiet"]) == 2
  assert "recipe is not valid UTF-8 text" in capsys.readouterr().err


def test_non_numeric_parameter_names_parameter_and_model(models, tmp_path, monkeypatch):
  _no_merging(monkeypatch)
  with pytest.raises(ValueError, match=r"parameter 'weight' of model '.*ft' is 'abc', not a "
                     r"number \(tensor '"):
    merge_checkpoints(_recipe(models, weight="abc"), tmp_path / "o", progress=False)
  with pytest.raises(ValueError, match=r"parameter 't' is 'half', not a number"):
    merge_checkpoints({"merge_method": "slerp", "base_model": str(models / "base"),
                       "models": [{"model": str(models / "ft")}], "parameters": {"t": "half"}},
                      tmp_path / "o", progress=False)
  assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text,msg", [("{bad", "is not valid JSON"),
                                      ("[1, 2]", "must be a JSON object, found list"),
                                      (b"{\"a\": \"\xff\"}", "is not valid UTF-8")])
def test_invalid_base_config_reported_before_merging(models, tmp_path, monkeypatch, text, msg):
  import shutil
  shutil.copytree(models / "base", tmp_path / "base")
  cfg = tmp_path / "base" / "config.json"
  cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
  _no_merging(monkeypatch)
  rec = _recipe(models)
  rec["base_model"] = str(tmp_path / "base")
  with pytest.raises(ValueError, match=msg) as e:
    merge_checkpoints(rec, tmp_path / "o", progress=False)
  assert str(e.value).startswith(f"{cfg}: config.json of model ")
  assert not (tmp_path / "o").exists()


def test_output_folder_checked_before_any_tensor_is_read(models, tmp_path, monkeypatch):
  def no_reading(*a, **k):
    raise AssertionError("a checkpoint was opened before the output folder was checked")
  monkeypatch.setattr(merge_stream, "open_checkpoint", no_reading)
  (tmp_path / "exists").mkdir()
  with pytest.raises(FileExistsError, match="output folder already exists"):
    merge_checkpoints(_recipe(models), tmp_path / "exists", progress=False)
  (tmp_path / "file").write_text("x")
  with pytest.raises(NotADirectoryError, match="is a file, so the output folder"):
    merge_checkpoints(_recipe(models), tmp_path / "file" / "out", progress=False)


def test_valid_merge_still_writes_config(models, tmp_path):
  out = merge_checkpoints(_recipe(models), tmp_path / "o", progress=False,
                          max_shard_bytes="1MiB")["out_dir"]
  got = jp.io.load_safetensors(out)
  base, ft = jp.io.load_safetensors(models / "base"), jp.io.load_safetensors(models / "ft")
  for k in base:
    np.testing.assert_allclose(got[k], base[k] + 0.5 * (ft[k] - base[k]), atol=1e-6)
  assert jp.io.read_json(tmp_path / "o" / "config.json") == jp.io.read_json(
      models / "base" / "config.json")
