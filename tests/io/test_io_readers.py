"""The strict readers of issue 25 (adapter config, model config, tokenizer, requests) one property
at a time; the generated hostile cases are in tests/fuzz/test_fuzz_readers.py."""

import json
import os

import numpy as np
import pytest

import jaxparams as jp
from jaxparams import io as jio


def _write(d, name, obj):
  d.mkdir(parents=True, exist_ok=True)
  (d / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return d


def test_adapter_config_values_are_not_coerced(tmp_path):
  ok = jio.read_adapter_config(_write(tmp_path / "a", "adapter_config.json",
                                      {"r": 8, "lora_alpha": 16, "use_rslora": False}))
  assert (ok.r, ok.lora_alpha, ok.use_rslora) == (8, 16, False)
  for field, value, msg in [
      ("r", 8.7, r"field 'r' must be an integer in \[1, 65536\], found number 8.7"),
      ("r", "8", "found string '8'"), ("r", None, "found null"), ("r", True, "found boolean"),
      ("lora_alpha", "16", r"'lora_alpha' must be a finite number, found string '16'"),
      ("use_rslora", "no", "'use_rslora' must be true or false, found string 'no'"),
      ("rank_pattern", [], r"'rank_pattern' must be an object or null, found list \[\]"),
      ("rank_pattern", {"q": 2.5}, r"field 'rank_pattern\[q\]' must be an integer"),
      ("target_modules", 5, "'target_modules' must be a list of strings or null")]:
    d = _write(tmp_path / f"{field}{value!r}", "adapter_config.json", {field: value})
    with pytest.raises(ValueError, match=msg) as e:
      jio.read_adapter_config(d)
    assert str(d / "adapter_config.json") in str(e.value) and "\n" not in str(e.value)


def test_unknown_adapter_field_named_but_value_never_echoed(tmp_path):
  d = _write(tmp_path / "a", "adapter_config.json", {"r": 2, "secret_token": "hunter2"})
  with pytest.raises(ValueError, match=r"unknown adapter_config field\(s\) \['secret_token'\]") \
      as e:
    jio.read_adapter_config(d)
  assert "hunter2" not in str(e.value)


def test_rslora_scale_from_a_real_bool(tmp_path):
  """``use_rslora: true`` gives alpha/sqrt(r) (PEFT), false gives alpha/r; nothing else is read."""
  ad = jp.adapt.PeftAdapter(modules={"model.layers.0.mlp.up_proj": dict(
      A=np.ones((8, 4), np.float32), B=np.zeros((4, 8), np.float32), scale=2.0)})
  for rs, want in ((True, 16 / np.sqrt(8)), (False, 2.0)):
    out = tmp_path / f"ad{rs}"
    jp.adapt.write_peft(ad, out, config={"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                         "use_rslora": rs, "target_modules": ["up_proj"]})
    got = jp.adapt.read_peft(out).modules["model.layers.0.mlp.up_proj"]["scale"]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_model_config_bounds_and_types(tmp_path):
  d = _write(tmp_path / "m", "config.json", {"model_type": "llama", "hidden_size": 64,
                                             "head_dim": None, "eos_token_id": [1, 2]})
  assert jio.read_model_config(d)["hidden_size"] == 64
  for value, msg in [("64", "found string '64'"), (0, "found integer 0"),
                     (2**30, r"in \[1, 1048576\], found integer 1073741824")]:
    _write(d, "config.json", {"hidden_size": value})
    with pytest.raises(ValueError, match=f"config.json: field 'hidden_size' must be an integer "
                                         f".*{msg}"):
      jio.read_model_config(d)


def test_size_checked_before_reading(tmp_path, monkeypatch):
  d = _write(tmp_path / "m", "config.json", "{}")
  with open(d / "config.json", "r+b") as f:
    f.truncate(jio.model_config.MAX_CONFIG_BYTES + 1)
  opened = []
  monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a) or 1 / 0)
  with pytest.raises(ValueError, match=r"config.json is 4194305 bytes, more than the limit"):
    jio.read_model_config(d)
  assert not opened


def test_tokenizer_id_beyond_the_model_vocabulary(tmp_path):
  from tokenizers import Tokenizer, models
  tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 9}, unk_token="<unk>"))
  tok.save(str(tmp_path / "tokenizer.json"))
  assert jio.load_tokenizer_file(tmp_path, vocab_size=10).token_to_id("b") == 9
  with pytest.raises(ValueError, match=r"tokenizer.json: the tokenizer has token id 9 but the "
                                       r"model's vocabulary has 8 rows"):
    jio.load_tokenizer_file(tmp_path, vocab_size=8)


def test_requests_rows(tmp_path):
  p = tmp_path / "r.jsonl"
  p.write_text('{"prompt": "{} is in", "subject": "Paris", "target_new": {"str": "Rome"}}\n\n')
  (row,) = jio.read_request_rows(p)
  assert (row.prompt, row.subject, row.target_new, row.where) == ("{} is in", "Paris", "Rome",
                                                                   f"{p}:1")
  for text, msg in [("[1]", r":\[0\]: a request must be a JSON object, found integer 1"),
                    ('{"prompt": "x"', r"r.jsonl:1: line is not valid JSON"),
                    ('{"prompt": ["x"], "subject": "s", "target_new": "t"}',
                     r":1: field 'prompt' must be a string, found list"),
                    ("\n", "holds no requests")]:
    p.write_text(text)
    with pytest.raises(ValueError, match=msg):
      jio.read_request_rows(p)
  p.write_bytes(b'{"prompt": "\xff"}')
  with pytest.raises(ValueError, match=r"r.jsonl: requests file is not valid UTF-8"):
    jio.read_request_rows(p)


def test_requests_rows_easyedit_fields(tmp_path):
  """EasyEdit's rephrase_prompt (a string or a list) and ground_truth, CounterFact's
  target_true {"str": ...}: kept, typed; absent ones are None."""
  p = tmp_path / "r.jsonl"
  p.write_text('{"prompt": "{} is in", "subject": "Paris", "target_new": "Rome", '
               '"rephrase_prompt": ["Paris lies in", "x"], "ground_truth": "France"}\n'
               '{"prompt": "{} is in", "subject": "Oslo", "target_new": "Rome", '
               '"target_true": {"str": "Norway"}}\n'
               '{"prompt": "{} is in", "subject": "Bern", "target_new": "Rome"}\n')
  rows = jio.read_request_rows(p)
  assert [(r.rephrase_prompt, r.ground_truth) for r in rows] == [
      ("Paris lies in", "France"), (None, "Norway"), (None, None)]
  for extra, msg in [('"rephrase_prompt": 3', r":1: field 'rephrase_prompt' must be a string"),
                     ('"ground_truth": ["a"]', r":1: field 'ground_truth' must be a string"),
                     ('"target_true": {"s": 1}', r":1: field 'target_true' must be a string or")]:
    p.write_text('{"prompt": "{} is in", "subject": "Paris", "target_new": "Rome", '
                 f'{extra}}}\n')
    with pytest.raises(ValueError, match=msg):
      jio.read_request_rows(p)


def test_lora_merge_modules_to_save_written_in_base_dtype(tmp_path):
  """A valid modules_to_save tensor replaces the base's, cast to the base dtype (bf16 here)."""
  import ml_dtypes
  bf16 = ml_dtypes.bfloat16
  jp.io.save_safetensors({"lin.weight": np.eye(2, dtype=bf16), "norm.weight":
                          np.ones(2, bf16)}, tmp_path / "base", config={"model_type": "toy"})
  ad = jp.adapt.PeftAdapter(modules={"lin": dict(A=np.ones((1, 2), np.float32),
                                                 B=np.ones((2, 1), np.float32), scale=0.5)},
                            modules_to_save={"norm.weight": np.array([3.0, 4.0], np.float32)})
  jp.adapt.write_peft(ad, tmp_path / "ad", config={"r": 1, "lora_alpha": 0.5,
                                                   "modules_to_save": ["norm"]})
  rep = jp.adapt.stream.merge_checkpoint(tmp_path / "base", tmp_path / "ad", tmp_path / "out")
  got = jp.io.load_safetensors(tmp_path / "out")
  assert rep["merged"] == 1 and rep["replaced"] == 1 and got["norm.weight"].dtype == bf16
  assert got["norm.weight"].astype(np.float32).tolist() == [3.0, 4.0]


def test_regmean_calibration_must_stay_in_the_recipe_folder(tmp_path):
  from jaxparams.merge.learned.checkpoints import read_calibration
  from jaxparams.merge.recipe import parse_recipe
  (tmp_path / "cal.txt").write_text("a b\n")
  outside = tmp_path / "outside.txt"
  outside.write_text("secret\n")
  d = tmp_path / "r"
  d.mkdir()
  (d / "cal.txt").write_text("one\ntwo\n")
  os.symlink(outside, d / "link.txt")
  recipe = parse_recipe({"merge_method": "linear", "models": [{"model": "a"}]},
                        source=str(d / "r.yml"))
  assert read_calibration("cal.txt", recipe) == ["one", "two"]
  for name, msg in [("/etc/hostname", "leads outside the model folder"),
                    ("../cal.txt", "leads outside"), ("link.txt", "is a symlink to .*outside")]:
    with pytest.raises(ValueError, match=msg):
      read_calibration(name, recipe)
