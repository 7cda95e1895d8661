"""jp.io: safetensors reading/writing, sharding, atomicity and bad input."""

import json
import os
import signal
import struct
from pathlib import Path

import chex
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxparams as jp

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
          ml_dtypes.float8_e5m2, np.int8, np.uint8, np.int32]


def _tensors():
  rng = np.random.default_rng(0)
  return {f"t{i}.{np.dtype(d).name}": (rng.normal(size=(3, 5)) * 10).astype(d)
          for i, d in enumerate(DTYPES)}


def test_round_trip_every_dtype(tmp_path):
  t = _tensors()
  jp.io.save_safetensors(t, tmp_path / "ck", config={"model_type": "bert"})
  with jp.io.open_checkpoint(tmp_path / "ck") as ck:
    assert ck.names() == list(t)
    for name, arr in t.items():
      s = ck.spec(name)
      assert (s.shape, s.dtype) == (arr.shape, arr.dtype)
      np.testing.assert_array_equal(ck.read(name).view(np.uint8), arr.view(np.uint8))
    assert ck.config() == {"model_type": "bert"}
    assert ck.metadata == {"format": "pt"}


def test_matches_the_safetensors_library(tmp_path):
  from safetensors.numpy import load_file, save_file
  t = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.int32)}
  save_file(t, str(tmp_path / "lib.safetensors"), metadata={"format": "pt"})
  with jp.io.open_checkpoint(tmp_path / "lib.safetensors") as ck:
    chex.assert_trees_all_equal({n: np.array(ck.read(n)) for n in ck.names()}, t)
  jp.io.write_safetensors_file(tmp_path / "ours.safetensors", t, {"format": "pt"})
  chex.assert_trees_all_equal(load_file(str(tmp_path / "ours.safetensors")), t)


def test_sharded_write_with_index(tmp_path):
  t = {f"layers.{i}.weight": np.full((16, 16), i, np.float32) for i in range(5)}
  jp.io.save_safetensors(t, tmp_path / "ck", max_shard_bytes=2 * 16 * 16 * 4)
  files = sorted(os.listdir(tmp_path / "ck"))
  assert files == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                   "model-00003-of-00003.safetensors", "model.safetensors.index.json"]
  index = json.loads((tmp_path / "ck" / jp.io.INDEX_NAME).read_text())
  assert index["metadata"]["total_size"] == 5 * 16 * 16 * 4
  assert index["weight_map"]["layers.4.weight"] == "model-00003-of-00003.safetensors"
  chex.assert_trees_all_equal(jp.io.load_safetensors(tmp_path / "ck"), t)


def test_reads_one_tensor_without_loading_others(tmp_path):
  t = {"big": np.zeros((256, 1024), np.float32), "small": np.ones(3, np.float32)}
  jp.io.save_safetensors(t, tmp_path / "ck")
  with jp.io.open_checkpoint(tmp_path / "ck") as ck:
    small = ck.read("small")
    # A fresh copy read with pread (no mmap: a file truncated while open cannot SIGBUS).
    assert small.flags.owndata and small.flags.writeable and small.tolist() == [1.0] * 3
    assert ck.spec("big").nbytes == 256 * 1024 * 4


def test_orbax_round_trip(tmp_path):
  tree = {"a": {"w": jnp.arange(6.0).reshape(2, 3)}, "b": [jnp.ones(2, jnp.bfloat16)]}
  jp.io.save_orbax(tree, tmp_path / "orb")
  chex.assert_trees_all_equal(jp.io.restore_orbax(tmp_path / "orb", like=tree), tree)
  with pytest.raises(FileExistsError, match="already exists"):
    jp.io.save_orbax(tree, tmp_path / "orb")


# ---- bad input -------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt"])
def test_pickle_is_refused(tmp_path, suffix):
  p = tmp_path / f"pytorch_model{suffix}"
  p.write_bytes(b"\x80\x04not really")
  with pytest.raises(ValueError, match=rf"pytorch_model\{suffix}.*never loads.*safetensors"):
    jp.io.open_checkpoint(p)
  with pytest.raises(ValueError, match="refusing pickle"):
    jp.io.open_checkpoint(tmp_path)


def _one_file(tmp_path):
  p = tmp_path / "m.safetensors"
  jp.io.write_safetensors_file(p, {"w": np.ones((4, 4), np.float32), "b": np.ones(4, np.float32)})
  return p


def test_truncated_file_names_file_and_tensor(tmp_path):
  p = _one_file(tmp_path)
  p.write_bytes(p.read_bytes()[:-10])
  with pytest.raises(ValueError, match=r"m\.safetensors: tensor 'b': truncated file"):
    jp.io.open_checkpoint(p)
  p.write_bytes(b"\x01\x02")
  with pytest.raises(ValueError, match=r"m\.safetensors: not a safetensors file: 2 bytes"):
    jp.io.open_checkpoint(p)


def test_corrupt_header(tmp_path):
  p = _one_file(tmp_path)
  raw = bytearray(p.read_bytes())
  raw[8] = ord("X")  # header is no longer JSON
  p.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match=r"m\.safetensors: corrupt safetensors header"):
    jp.io.open_checkpoint(p)
  p.write_bytes(struct.pack("<Q", 10**6) + b"{}")
  with pytest.raises(ValueError, match=r"m\.safetensors: not a safetensors file \(or truncated\)"):
    jp.io.open_checkpoint(p)


def test_unsupported_dtype_names_tensor(tmp_path):
  header = json.dumps({"z": {"dtype": "C128", "shape": [1], "data_offsets": [0, 16]}}).encode()
  p = tmp_path / "c.safetensors"
  p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
  with pytest.raises(ValueError, match=r"c\.safetensors: tensor 'z': unknown safetensors dtype 'C128'"):
    jp.io.open_checkpoint(p)


def test_missing_shard_and_bad_index(tmp_path):
  t = {f"w{i}": np.ones(64, np.float32) for i in range(3)}
  jp.io.save_safetensors(t, tmp_path / "ck", max_shard_bytes=256)
  (tmp_path / "ck" / "model-00002-of-00003.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match=r"shard 'model-00002-of-00003.safetensors' is missing"):
    jp.io.open_checkpoint(tmp_path / "ck")
  jp.io.save_safetensors(t, tmp_path / "ck2", max_shard_bytes=256)
  idx_path = tmp_path / "ck2" / jp.io.INDEX_NAME
  idx = json.loads(idx_path.read_text())
  idx["weight_map"]["ghost"] = "model-00001-of-00003.safetensors"
  idx_path.write_text(json.dumps(idx))
  with pytest.raises(ValueError, match=r"tensor 'ghost' is mapped to 'model-00001-of-00003.safetensors'"):
    jp.io.open_checkpoint(tmp_path / "ck2")


def test_missing_path_and_tensor(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    jp.io.open_checkpoint(tmp_path / "nope")
  with jp.io.open_checkpoint(_one_file(tmp_path)) as ck:
    with pytest.raises(KeyError, match="no tensor named 'q'"):
      ck.read("q")


# ---- atomic output ----------------------------------------------------------


def test_exception_mid_write_leaves_nothing(tmp_path):
  out = tmp_path / "out"
  with pytest.raises(RuntimeError):
    with jp.io.SafetensorsWriter(out, max_shard_bytes=8) as w:
      w.add("a", np.ones(4, np.float32))
      w.add("b", np.ones(4, np.float32))  # first shard already on disk in the temp folder
      raise RuntimeError("boom")
  assert list(tmp_path.iterdir()) == []


def test_ctrl_c_mid_write_leaves_nothing(tmp_path):
  out = tmp_path / "out"
  with pytest.raises(KeyboardInterrupt):
    with jp.io.SafetensorsWriter(out) as w:
      w.add("a", np.ones(4, np.float32))
      os.kill(os.getpid(), signal.SIGINT)
  assert list(tmp_path.iterdir()) == []


def test_existing_output_refused_unless_overwrite(tmp_path):
  jp.io.save_safetensors({"a": np.ones(1, np.float32)}, tmp_path / "o")
  with pytest.raises(FileExistsError, match=r"o: output folder already exists.*overwrite"):
    jp.io.save_safetensors({"a": np.zeros(1, np.float32)}, tmp_path / "o")
  jp.io.save_safetensors({"b": np.zeros(1, np.float32)}, tmp_path / "o", overwrite=True)
  assert jp.io.load_safetensors(tmp_path / "o").keys() == {"b"}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_copies_config_and_tokenizer(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "tokenizer.json").write_text("{}")
  (src / "vocab.txt").write_text("a\n")
  with jp.io.SafetensorsWriter(tmp_path / "o") as w:
    w.add("x", np.ones(1, np.float32))
    assert w.copy_from(src) == ["tokenizer.json", "vocab.txt"]
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    assert w.copy_from(src, jp.io.SENTENCE_TRANSFORMERS_FILES) == ["1_Pooling/config.json"]
  assert (tmp_path / "o" / "vocab.txt").read_text() == "a\n"
  assert "mean_tokens" in (tmp_path / "o" / "1_Pooling" / "config.json").read_text()
