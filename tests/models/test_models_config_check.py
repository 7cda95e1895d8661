"""A hostile ``config.json`` (issue 10, item 5): one clear error naming config.json and the
field, found from the JSON and the checkpoint headers alone, before any config object or model is
built (so a layer count of a million cannot grow memory)."""

import json
import math
import shutil
from pathlib import Path

import pytest

import jaxparams.models as jm
from jaxparams.cli.main import main as cli_main
from jaxparams.models import hf as jhf

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

HOSTILE = [
    ("num_hidden_layers", 1_000,
     r"num_hidden_layers is 1000 but the checkpoint's headers hold 2 layer\(s\)"),
    ("num_hidden_layers", 1_000_000,  # io.read_model_config's bound, before the headers
     r"field 'num_hidden_layers' must be an integer in \[1, 16384\], found integer 1000000"),
    ("num_attention_heads", 0, r"field 'num_attention_heads' must be an integer in \[1, 16384\], found "
                               r"integer 0"),
    ("hidden_size", "abc", r"field 'hidden_size' must be an integer in \[1, 1048576\], found "
                            r"string 'abc'"),
    ("hidden_size", 10**5, r"hidden_size is 100000 but no tensor in the checkpoint has a "
                            r"dimension that large \(largest: 256\)"),
    ("num_hidden_layers", True, r"field 'num_hidden_layers' must be an integer in \[1, 16384\], "
                                 r"found boolean True"),
    ("intermediate_size", 12.5, r"field 'intermediate_size' must be an integer in \[1, 4194304\], "
                                  r"found number 12.5"),
    ("num_key_value_heads", -2, r"field 'num_key_value_heads' must be an integer in \[1, 16384\], "
                                 r"found integer -2"),
    ("rms_norm_eps", math.nan, r"not valid JSON \(NaN is not a JSON number\)"),
    ("rope_theta", "big", r"field 'rope_theta' must be a number, found 'big'"),
    ("tie_word_embeddings", "yes", r"field 'tie_word_embeddings' must be true or false"),
    ("rope_parameters", [1, 2], r"field 'rope_parameters' must be an object or null"),
    ("model_type", ["llama"], r"field 'model_type' must be a string, found list \['llama'\]"),
    ("vocab_size", None, r"field 'vocab_size' must be an integer in \[1, 16777216\], found null"),
    ("num_key_value_heads", 3, r"invalid llama config: num_attention_heads \(4\) must be a "
                               r"multiple of num_key_value_heads \(3\)"),
]


def _folder(tmp_path, edit, src="llama_tiny"):
  dst = tmp_path / "m"
  shutil.copytree(FIXTURES / src, dst)
  cfg = json.loads((dst / "config.json").read_text())
  cfg = edit(cfg)
  (dst / "config.json").write_text(json.dumps(cfg))
  return dst


def _nothing_built(monkeypatch):
  def boom(*a, **k):
    raise AssertionError("a config or model was built before the config was checked")
  monkeypatch.setattr(jhf, "_abstract_params", boom)
  monkeypatch.setattr(jm.LlamaConfig, "from_hf_dict", classmethod(boom))


@pytest.mark.parametrize("field,value,message", HOSTILE, ids=[f"{f}={v!r:.12}" for f, v, _ in
                                                                HOSTILE])
def test_hostile_field_is_named_with_config_json(tmp_path, monkeypatch, field, value, message):
  src = _folder(tmp_path, lambda c: {**c, field: value})
  if field != "num_key_value_heads" or value != 3:  # that one needs the config built to find
    _nothing_built(monkeypatch)
  with pytest.raises(ValueError, match=r"m/config\.json: .*" + message):
    jm.from_hf(src)


@pytest.mark.parametrize("cfg", [[1, 2], "llama", 3, None])
def test_config_that_is_not_an_object(tmp_path, monkeypatch, cfg):
  src = _folder(tmp_path, lambda c: cfg)
  _nothing_built(monkeypatch)
  with pytest.raises(ValueError, match=r"config\.json: must be a JSON object, found "
                                       + ("null" if cfg is None else type(cfg).__name__)):
    jm.from_hf(src)


def test_missing_required_field(tmp_path):
  def drop(c):
    del c["hidden_size"]
    return c
  with pytest.raises(ValueError, match=r"config\.json: required field 'hidden_size' is missing"):
    jm.from_hf(_folder(tmp_path, drop))


def test_hostile_layer_count_in_other_families(tmp_path, monkeypatch):
  for name in ("gemma2_tiny", "phi3_tiny"):
    src = _folder(tmp_path / name, lambda c: {**c, "num_hidden_layers": 10**4},
                  f"families/{name}")
    monkeypatch.setattr(jhf, "_abstract_params", lambda *a: 1 / 0)
    with pytest.raises(ValueError, match=r"num_hidden_layers is 10000 but the checkpoint"):
      jm.from_hf(src)


def test_fewer_layers_than_stored_still_loads_with_strict_false(tmp_path):
  src = _folder(tmp_path, lambda c: {**c, "num_hidden_layers": 1})
  with pytest.raises(ValueError, match=r"unexpected tensor.*model\.layers\.1\."):
    jm.from_hf(src)
  _, params, config = jm.from_hf(src, strict=False)
  assert config.num_hidden_layers == 1 and "layers_1" not in params


def test_quantize_cli_gives_one_line_and_exit_2(tmp_path, capsys):
  src = _folder(tmp_path, lambda c: {**c, "num_hidden_layers": 1_000})
  rc = cli_main(["quantize", str(src), str(tmp_path / "out"), "--no-progress"])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1
  assert "config.json" in err and "num_hidden_layers is 1000 " in err
  assert not (tmp_path / "out").exists()
