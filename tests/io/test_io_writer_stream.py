"""SafetensorsWriter's write-through mode (header_reserve): files the official reader accepts."""

import json
import struct

import numpy as np
import pytest
import safetensors.numpy as st

import jaxparams as jp


def _tensors():
  rng = np.random.default_rng(0)
  return {"layers.0.w": rng.standard_normal((5, 3)).astype(np.float32),
          "layers.0.b": np.arange(7, dtype=np.int32),
          "empty": np.zeros((0, 4), np.float32),
          "layers.1.w": rng.standard_normal((4, 4)).astype(np.float16)}


@pytest.mark.parametrize("reserve", [4096, 8])  # 8: every header outgrows it, data moved
def test_write_through_files_read_by_safetensors(tmp_path, reserve):
  want = _tensors()
  out = tmp_path / "o"
  with jp.io.SafetensorsWriter(out, header_reserve=reserve, metadata={"format": "pt"}) as w:
    for k, v in want.items():
      w.add(k, v)
  f = out / "model.safetensors"
  got = st.load_file(str(f))  # the official reader
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape
    np.testing.assert_array_equal(got[k], v)
  n = struct.unpack("<Q", f.read_bytes()[:8])[0]
  header = json.loads(f.read_bytes()[8:8 + n])
  assert header["__metadata__"] == {"format": "pt"}
  assert n % 8 == 0 and (n == reserve if reserve == 4096 else n > reserve)
  assert f.stat().st_size == 8 + n + sum(v.nbytes for v in want.values())


def test_write_through_shards_like_buffered_writer(tmp_path):
  want = _tensors()
  for mode, kw in (("buffered", {}), ("through", {"header_reserve": 512})):
    with jp.io.SafetensorsWriter(tmp_path / mode, max_shard_bytes=64, **kw) as w:
      for k, v in want.items():
        w.add(k, v)
  a = json.loads((tmp_path / "buffered" / "model.safetensors.index.json").read_text())
  b = json.loads((tmp_path / "through" / "model.safetensors.index.json").read_text())
  assert a == b and len(set(a["weight_map"].values())) > 1
  for fn in set(b["weight_map"].values()):
    got, ref = st.load_file(str(tmp_path / "through" / fn)), st.load_file(
        str(tmp_path / "buffered" / fn))
    assert sorted(got) == sorted(ref)
    for k in ref:
      np.testing.assert_array_equal(got[k], ref[k])


def test_write_through_error_leaves_nothing(tmp_path):
  out = tmp_path / "o"
  with pytest.raises(RuntimeError, match="boom"):
    with jp.io.SafetensorsWriter(out, header_reserve=256) as w:
      w.add("a", np.ones(3, np.float32))
      raise RuntimeError("boom")
  assert not out.exists() and list(tmp_path.iterdir()) == []
