"""Row-column bundling: the round trip gives back every tensor bit for bit; the layout is right."""

import json
import os

import ml_dtypes
import numpy as np
import pytest

from jaxparams import flash
from jaxparams.cli.main import main
from jaxparams.demo.tiny_llama import llama_config, write_llama
from jaxparams.io import load_safetensors, open_checkpoint


def _same_bits(a: dict, b: dict) -> bool:
  return sorted(a) == sorted(b) and all(
      a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
      and a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["bundled", "split"])
def test_round_trip_is_bit_exact(tmp_path, dtype, layout):
  src = write_llama(tmp_path / "m", dtype=dtype, max_shard_bytes=4000)  # sharded + index
  flash.bundle(src, tmp_path / "b", layout=layout, max_shard_bytes=5000)
  flash.unbundle(tmp_path / "b", tmp_path / "u")
  assert _same_bits(load_safetensors(src), load_safetensors(tmp_path / "u"))
  assert json.loads((tmp_path / "u" / "config.json").read_text()) == json.loads(
      (src / "config.json").read_text())


def test_bundle_row_is_gate_up_down_of_one_neuron(tmp_path):
  src = write_llama(tmp_path / "m")
  flash.bundle(src, tmp_path / "b")
  a, b = load_safetensors(src), load_safetensors(tmp_path / "b")
  h = llama_config()["hidden_size"]
  row = b["model.layers.1.mlp.bundle"][7]
  np.testing.assert_array_equal(row[:h], a["model.layers.1.mlp.gate_proj.weight"][7])
  np.testing.assert_array_equal(row[h:2 * h], a["model.layers.1.mlp.up_proj.weight"][7])
  np.testing.assert_array_equal(row[2 * h:], a["model.layers.1.mlp.down_proj.weight"][:, 7])
  assert not any(".mlp.gate_proj" in k for k in b)
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  other = load_file(str(tmp_path / "b" / "model.safetensors"))  # another tool reads it
  assert sorted(other) == sorted(b)
  np.testing.assert_array_equal(other["model.layers.1.mlp.bundle"], b["model.layers.1.mlp.bundle"])
  with open_checkpoint(tmp_path / "b") as r:  # a plain safetensors folder, marked
    assert r.metadata.get(flash.BUNDLE_KEY) == "bundled"
    assert flash.bundled_layers(r) == {0: "model.layers.0.mlp.bundle",
                                       1: "model.layers.1.mlp.bundle"}


def test_cli_round_trip(tmp_path):
  src = write_llama(tmp_path / "m", dtype="bfloat16")
  assert main(["flash", "bundle", str(src), str(tmp_path / "b")]) == 0
  assert main(["flash", "unbundle", str(tmp_path / "b"), str(tmp_path / "u")]) == 0
  assert _same_bits(load_safetensors(src), load_safetensors(tmp_path / "u"))
  assert load_safetensors(tmp_path / "u")["model.norm.weight"].dtype == ml_dtypes.bfloat16


def test_errors_name_the_input(tmp_path):
  src = write_llama(tmp_path / "m")
  with pytest.raises(ValueError, match="not a bundled checkpoint"):
    flash.unbundle(src, tmp_path / "u")
  flash.bundle(src, tmp_path / "b")
  with pytest.raises(ValueError, match="already bundled"):
    flash.bundle(tmp_path / "b", tmp_path / "bb")
  with pytest.raises(ValueError, match="unknown layout"):
    flash.bundle(src, tmp_path / "x", layout="zigzag")
  t = load_safetensors(src)
  del t["model.layers.0.mlp.up_proj.weight"]
  bad = write_llama(tmp_path / "bad", tensors=t)
  with pytest.raises(ValueError, match=r"lacks \['up_proj'\]"):
    flash.bundle(bad, tmp_path / "y")
  assert not os.path.exists(tmp_path / "y")
