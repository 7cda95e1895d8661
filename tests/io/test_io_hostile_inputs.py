"""Hostile checkpoints (issue 10, items 1, 3, 6, 7, 11): the reader is as strict as the format,
reads only inside the model folder, never echoes file bytes and never dies of SIGBUS."""

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors import deserialize

import jaxparams as jp


def _file(path, header, data=b"", *, raw=False):
  text = header if raw else json.dumps(header)
  h = text.encode("utf-8", "surrogatepass")
  path.write_bytes(struct.pack("<Q", len(h)) + h + data)
  return path


def _official_ok(path) -> bool:
  try:
    deserialize(path.read_bytes())
    return True
  except Exception:  # pylint: disable=broad-except
    return False


# ---- item 3: exactly the format's rules (the official reader decides) ----------------------

U8 = {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}
CASES = {  # name: (header text, data, official reader accepts)
    "negative shape, reversed offsets": (
        '{"a":{"dtype":"U8","shape":[-2],"data_offsets":[2,0]},'
        '"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy", False),
    "overlapping": ('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
                    '"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}', b"xyz", False),
    "gap": ('{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"xy", False),
    "trailing bytes": (json.dumps({"a": U8}), b"xyz", False),
    "metadata not a map": ('{"__metadata__":5}', b"", False),
    "metadata value not a string": ('{"__metadata__":{"k":1}}', b"", False),
    "float in shape": ('{"a":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}}', b"xy", False),
    "NaN in shape": ('{"a":{"dtype":"U8","shape":[NaN],"data_offsets":[0,2]}}', b"xy", False),
    "Infinity in shape": ('{"a":{"dtype":"U8","shape":[Infinity],"data_offsets":[0,2]}}', b"xy",
                          False),
    "-0 in shape": ('{"a":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}}', b"", False),
    "2**64 in shape": ('{"a":{"dtype":"U8","shape":[18446744073709551616],'
                       '"data_offsets":[0,2]}}', b"xy", False),
    "shape product overflows": ('{"a":{"dtype":"U8","shape":[4294967296,4294967296,0],'
                                '"data_offsets":[0,0]}}', b"", False),
    "duplicate field": ('{"a":{"dtype":"U8","shape":[2],"shape":[2],"data_offsets":[0,2]}}',
                        b"xy", False),
    "lone surrogate": ('{"\\ud800":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy",
                       False),
    "5000-deep nesting": ('{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":' +
                          "[" * 5000 + "]" * 5000 + "}}", b"", False),
    "130-deep nesting": ('{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":' +
                         "[" * 130 + "]" * 130 + "}}", b"", False),
    "sub-byte misaligned": ('{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', b"xy",
                            False),
    "5000-digit number": ('{"a":{"dtype":"U8","shape":[' + "9" * 5000 + '],"data_offsets":[0,2]}}',
                          b"xy", False),
    # accepted by both
    "zero-size tensor at the end": ('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
                                    '"z":{"dtype":"F32","shape":[0],"data_offsets":[2,2]}}',
                                    b"xy", True),
    "unknown extra field": ('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":[1]}}', b"xy",
                            True),
    "metadata null": ('{"__metadata__":null}', b"", True),
    "offsets out of header order": ('{"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},'
                                    '"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"xy",
                                    True),
    "surrogate pair (valid)": ('{"\\ud83d\\ude00":{"dtype":"U8","shape":[2],'
                               '"data_offsets":[0,2]}}', b"xy", True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_accepts_exactly_what_the_official_reader_accepts(tmp_path, case):
  text, data, ok = CASES[case]
  p = _file(tmp_path / "h.safetensors", text, data, raw=True)
  assert _official_ok(p) == ok  # the oracle agrees with the table
  if ok:
    with jp.io.open_checkpoint(p) as ck:
      official = dict(deserialize(p.read_bytes()))
      assert sorted(ck.names()) == sorted(official)
      for n, t in official.items():
        assert ck.read(n).reshape(-1).view(np.uint8).tobytes() == bytes(t["data"])
  else:
    with pytest.raises(ValueError) as e:
      jp.io.open_checkpoint(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_negative_shape_no_longer_reads_the_next_tensors_bytes(tmp_path):
  # Was accepted, and read('a') returned b's bytes (issue 10, item 3).
  p = _file(tmp_path / "neg.safetensors",
            {"a": {"dtype": "U8", "shape": [-2], "data_offsets": [2, 0]},
             "b": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"xy")
  with pytest.raises(ValueError, match=r"neg\.safetensors: tensor 'a': shape must be"):
    jp.io.open_checkpoint(p)


def test_duplicate_keys_are_refused(tmp_path):
  # The official reader keeps the last of two same-named tensors; we refuse the ambiguity.
  p = _file(tmp_path / "d.safetensors",
            '{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},'
            '"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy", raw=True)
  with pytest.raises(ValueError, match=r"d\.safetensors: corrupt safetensors header: duplicate "
                     r"key 'a'"):
    jp.io.open_checkpoint(p)


NEW_DTYPES = {"F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz, "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz,
              "F8_E8M0": ml_dtypes.float8_e8m0fnu, "C64": np.complex64}


@pytest.mark.parametrize("name", sorted(NEW_DTYPES))
def test_official_dtypes_read_byte_exact(tmp_path, name):
  dt = np.dtype(NEW_DTYPES[name])
  raw = np.arange(6 * dt.itemsize, dtype=np.uint8).tobytes()
  p = _file(tmp_path / "x.safetensors",
            {"t": {"dtype": name, "shape": [2, 3], "data_offsets": [0, len(raw)]}}, raw)
  assert _official_ok(p)
  with jp.io.open_checkpoint(p) as ck:
    a = ck.read("t")
  assert a.dtype == dt and a.shape == (2, 3) and a.tobytes() == raw


@pytest.mark.parametrize("name,count,nbytes", [("F4", 4, 2), ("F6_E2M3", 4, 3),
                                               ("F6_E3M2", 8, 6)])
def test_sub_byte_dtypes_headers_read_data_refused_by_name(tmp_path, name, count, nbytes):
  p = _file(tmp_path / "s.safetensors",
            {"t": {"dtype": name, "shape": [count], "data_offsets": [0, nbytes]}}, b"\0" * nbytes)
  assert _official_ok(p)
  with jp.io.open_checkpoint(p) as ck:
    assert ck.spec("t").nbytes == nbytes and ck.spec("t").dtype_name == name
    with pytest.raises(ValueError, match=rf"s\.safetensors: tensor 't': dtype {name} stores"):
      ck.read("t")


# ---- item 1: reads stay inside the model folder; no raw bytes in messages -------------------


def _sharded(tmp_path):
  t = {f"w{i}": np.full(8, i, np.float32) for i in range(3)}
  jp.io.save_safetensors(t, tmp_path / "m", max_shard_bytes=40)
  return tmp_path / "m"


def _point_index_at(folder, target):
  idx_path = folder / jp.io.INDEX_NAME
  idx = json.loads(idx_path.read_text())
  idx["weight_map"]["w0"] = target
  idx_path.write_text(json.dumps(idx))


@pytest.mark.parametrize("target", ["../outside.safetensors", "{abs}", "sub/../../outside.safetensors"])
def test_index_shards_outside_the_folder_are_refused(tmp_path, target):
  folder = _sharded(tmp_path)
  jp.io.write_safetensors_file(tmp_path / "outside.safetensors", {"w0": np.zeros(8, np.float32)})
  _point_index_at(folder, target.format(abs=tmp_path / "outside.safetensors"))
  with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: shard name .* leads "
                     r"outside the model folder"):
    jp.io.open_checkpoint(folder)


def test_symlinked_shard_escaping_the_folder_is_refused(tmp_path):
  folder = _sharded(tmp_path)
  jp.io.write_safetensors_file(tmp_path / "private.safetensors", {"w0": np.zeros(8, np.float32)})
  (folder / "evil.safetensors").symlink_to(tmp_path / "private.safetensors")
  _point_index_at(folder, "evil.safetensors")
  with pytest.raises(ValueError, match=r"shard 'evil\.safetensors' is a symlink to .*private"
                     r"\.safetensors, outside the model folder"):
    jp.io.open_checkpoint(folder)
  # without an index too (every *.safetensors of the folder)
  (folder / jp.io.INDEX_NAME).unlink()
  with pytest.raises(ValueError, match=r"'evil\.safetensors' is a symlink"):
    jp.io.open_checkpoint(folder)


def test_hugging_face_cache_symlinks_are_followed(tmp_path):
  # snapshots/<rev>/model.safetensors -> ../../blobs/<sha>: the hub cache layout.
  repo = tmp_path / "models--org--m"
  (repo / "blobs").mkdir(parents=True)
  (repo / "snapshots" / "abc").mkdir(parents=True)
  jp.io.write_safetensors_file(repo / "blobs" / "f00d", {"w": np.ones(2, np.float32)})
  (repo / "snapshots" / "abc" / "model.safetensors").symlink_to("../../blobs/f00d")
  with jp.io.open_checkpoint(repo / "snapshots" / "abc") as ck:
    assert ck.read("w").tolist() == [1.0, 1.0]


def test_non_safetensors_target_bytes_never_echoed(tmp_path):
  p = tmp_path / "secret.safetensors"
  p.write_bytes(b"hunter2!" + b"more private text")
  with pytest.raises(ValueError) as e:
    jp.io.open_checkpoint(p)
  n = struct.unpack("<Q", b"hunter2!")[0]
  assert str(n) not in str(e.value) and "hunter2" not in str(e.value)
  assert "secret.safetensors: not a safetensors file" in str(e.value)


@pytest.mark.parametrize("index,message", [
    ("[]", "expected an object with a 'weight_map'"),
    ('{"weight_map": ["a"]}', "expected an object with a 'weight_map'"),
    ('{"weight_map": {"w0": 5}}', r"weight_map\['w0'\] must be a shard file name"),
    ('{"weight_map": {"w0": null}}', r"weight_map\['w0'\] must be a shard file name"),
    ('{"weight_map": {}, "metadata": 3}', "'metadata' must be an object"),
    ('{"weight_map": {"w0": ""}}', "shard name '' is not a valid file name"),
    ("[" * 100000, "nested too deeply|not valid JSON"),
])
def test_index_of_wrong_types_is_one_clean_error(tmp_path, index, message):
  folder = _sharded(tmp_path)
  (folder / jp.io.INDEX_NAME).write_text(index)
  with pytest.raises(ValueError, match=message):
    jp.io.open_checkpoint(folder)


def test_non_utf8_index_and_config(tmp_path):
  folder = _sharded(tmp_path)
  (folder / "config.json").write_bytes(b'{"a": "\xff"}')
  with jp.io.open_checkpoint(folder) as ck:
    with pytest.raises(ValueError, match=r"config\.json: config\.json is not valid UTF-8"):
      ck.config()
  (folder / jp.io.INDEX_NAME).write_bytes(b"\xff\xfe")
  with pytest.raises(ValueError, match=r"index\.json: safetensors index is not valid UTF-8"):
    jp.io.open_checkpoint(folder)


# ---- item 6: files truncated or replaced while open ------------------------------------------


def test_truncated_while_open_is_a_clear_error_not_sigbus(tmp_path):
  p = tmp_path / "t.safetensors"
  jp.io.write_safetensors_file(p, {"a": np.ones(1024, np.float32), "b": np.ones(1024, np.float32)})
  with jp.io.open_checkpoint(p) as ck:
    ck.read("a")  # the file is open now
    with open(p, "r+b") as f:
      f.truncate(100)
    with pytest.raises(ValueError, match=r"t\.safetensors: tensor 'b': short read"):
      ck.read("b")


def test_replaced_before_first_read_is_detected(tmp_path):
  p = tmp_path / "r.safetensors"
  jp.io.write_safetensors_file(p, {"a": np.ones(4, np.float32)})
  with jp.io.open_checkpoint(p) as ck:
    jp.io.write_safetensors_file(tmp_path / "new.safetensors", {"a": np.zeros(8, np.float32)})
    os.replace(tmp_path / "new.safetensors", p)
    with pytest.raises(ValueError, match=r"r\.safetensors: the file was replaced"):
      ck.read("a")


def test_huge_zero_size_shape_is_a_clear_error(tmp_path):
  # Valid for the format (0 elements), but numpy cannot hold a dimension of 2**64 - 1.
  p = _file(tmp_path / "z.safetensors",
            {"a": {"dtype": "U8", "shape": [2**64 - 1, 0], "data_offsets": [0, 0]}})
  assert _official_ok(p)
  with jp.io.open_checkpoint(p) as ck:
    with pytest.raises(ValueError, match=r"z\.safetensors: tensor 'a': shape .* cannot be held"):
      ck.read("a")
