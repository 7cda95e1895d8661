"""Fuzzing the safetensors reader against the official `safetensors` package (the oracle).

Generated files, valid and mutated: every file the official reader accepts must
read back equal (names, dtypes, shapes, bytes); every file it refuses must be
refused by ours with one ValueError naming the file; ours may be stricter only
where documented (duplicate keys). Any other exception fails the test
(hypothesis shows the file). A few hundred cases by default, thousands under
``-m slow``. Set ``JAXPARAMS_FUZZ_REPORT=path.json`` to write the counts.
"""

from __future__ import annotations

import collections
import json
import os
import struct

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from safetensors import deserialize

import jaxparams as jp

# The official reader's dtypes and bit sizes (safetensors 0.8), independent of the code under test.
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}
SUB_BYTE = ("F4", "F6_E2M3", "F6_E3M2")

_SETTINGS = dict(deadline=None, database=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))
COUNTS: collections.Counter = collections.Counter()


class Raw(str):
  """JSON text inserted as is (NaN, -0, 1e400, ...)."""


class Pairs(list):
  """An object as a list of (key, value) pairs: duplicate keys allowed."""


def enc(v, ascii_only: bool) -> str:
  if isinstance(v, Raw):
    return str(v)
  if isinstance(v, (Pairs, dict)):
    items = v if isinstance(v, Pairs) else list(v.items())
    return "{" + ",".join(enc(k, ascii_only) + ":" + enc(x, ascii_only) for k, x in items) + "}"
  if isinstance(v, (list, tuple)):
    return "[" + ",".join(enc(x, ascii_only) for x in v) + "]"
  return json.dumps(v, ensure_ascii=ascii_only)


def blob(header_text: str, data: bytes, pad: int = 0) -> bytes:
  raw = header_text.encode("utf-8", "surrogatepass") + b" " * pad
  return struct.pack("<Q", len(raw)) + raw + data


# ---- generated valid files ---------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
dims = st.lists(st.integers(0, 4), max_size=3)


@st.composite
def valid_files(draw):
  n = draw(st.integers(0, 5))
  tensor_names = draw(st.lists(names.filter(lambda s: s != "__metadata__"), min_size=n,
                               max_size=n, unique=True))
  entries, offset, chunks = [], 0, []
  for name in tensor_names:
    dtype = draw(st.sampled_from(sorted(DTYPE_BITS)))
    shape = draw(dims)
    count = int(np.prod(shape, dtype=np.int64))
    if count * DTYPE_BITS[dtype] % 8:
      shape, count = shape + [8], count * 8
    size = count * DTYPE_BITS[dtype] // 8
    chunks.append(draw(st.binary(min_size=size, max_size=size)))
    entries.append([name, {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}])
    offset += size
  order = draw(st.permutations(range(len(entries))))
  header = Pairs([entries[i] for i in order])
  if draw(st.booleans()):
    header.insert(draw(st.integers(0, len(header))),
                  ["__metadata__", draw(st.dictionaries(names, names, max_size=3))])
  return header, b"".join(chunks), draw(st.booleans()), draw(st.integers(0, 7))


# ---- mutations ----------------------------------------------------------------

BAD_NUMBERS = [Raw(x) for x in ("-1", "-0", "1.0", "2e0", "NaN", "Infinity", "-Infinity",
                                "18446744073709551615", "18446744073709551616", "1e400",
                                "9" * 400, "9" * 5000, "true", "null", '"3"')]
ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5) |
                        st.sampled_from(BAD_NUMBERS),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3),
                                                                             c, max_size=3),
                        max_leaves=6)


@st.composite
def mutated_files(draw):
  header, data, ascii_only, pad = draw(valid_files())
  tensors = [kv for kv in header if kv[0] != "__metadata__"]
  op = draw(st.sampled_from([
      "field", "number", "offsets", "drop_field", "dup_tensor", "dup_field", "extra_field",
      "deep", "dtype", "metadata", "trailing", "truncate", "length", "flip", "surrogate",
      "overflow", "not_object", "garbage"]))
  text_mut = None
  if op in ("field", "number", "offsets", "drop_field", "dup_field", "extra_field", "deep",
            "dtype", "overflow") and not tensors:
    op = "metadata"
  if op == "field":
    info = draw(st.sampled_from(tensors))[1]
    info[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(ANY_JSON)
  elif op == "number":
    info = draw(st.sampled_from(tensors))[1]
    key = draw(st.sampled_from(["shape", "data_offsets"]))
    if info[key]:
      info[key][draw(st.integers(0, len(info[key]) - 1))] = draw(st.sampled_from(BAD_NUMBERS))
    else:
      info[key] = [draw(st.sampled_from(BAD_NUMBERS))]
  elif op == "offsets":
    info = draw(st.sampled_from(tensors))[1]
    a, b = info["data_offsets"]
    info["data_offsets"] = draw(st.sampled_from(
        [[b, a], [a + 1, b + 1], [max(a - 1, 0), b], [a, b + 1], [a], [a, b, b], [0, 0]]))
    if draw(st.booleans()):
      info["shape"] = [-x for x in info["shape"]] or [-1]
  elif op == "drop_field":
    info = draw(st.sampled_from(tensors))[1]
    del info[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
  elif op == "dup_tensor":
    if tensors:
      header.append(list(draw(st.sampled_from(tensors))))
    else:
      header.extend([["__metadata__", {}], ["__metadata__", {}]])
  elif op == "dup_field":
    name, info = draw(st.sampled_from(tensors))
    key = draw(st.sampled_from(["dtype", "shape", "data_offsets", "other"]))
    pairs = Pairs(list(info.items()) + [[key, info.get(key, 1)], [key, info.get(key, 1)]])
    header[header.index([name, info])] = [name, pairs]
  elif op == "extra_field":
    draw(st.sampled_from(tensors))[1]["x"] = draw(ANY_JSON)
  elif op == "deep":
    depth = draw(st.integers(100, 200))
    draw(st.sampled_from(tensors))[1]["x"] = Raw("[" * depth + "]" * depth)
  elif op == "dtype":
    draw(st.sampled_from(tensors))[1]["dtype"] = draw(st.sampled_from(
        ["C128", "F8_E4M3FN", "I4", "u8", "", "F32 ", "bf16", "U1"]))
  elif op == "metadata":
    header.insert(0, ["__metadata__", draw(ANY_JSON)])
  elif op == "trailing":
    data += draw(st.binary(min_size=1, max_size=9))
  elif op == "truncate":
    text_mut = ("truncate", draw(st.integers(0, 200)))
  elif op == "length":
    text_mut = ("length", draw(st.sampled_from([-3, -1, 1, 5, 2**32, 2**63, 100_000_001])))
  elif op == "flip":
    text_mut = ("flip", draw(st.integers(0, 10_000)), draw(st.integers(1, 255)))
  elif op == "surrogate":
    header.append([draw(st.sampled_from(["\ud800", "a\udfff", "\udc00b"])),
                   {"dtype": "U8", "shape": [0], "data_offsets": [len(data), len(data)]}])
  elif op == "overflow":
    info = draw(st.sampled_from(tensors))[1]
    info["shape"] = draw(st.sampled_from([[2**32, 2**32, 0], [0, 2**32, 2**32], [2**64 - 1, 0],
                                          [2**63, 2], [2**62, 4, 0], [2**61]]))
  elif op == "not_object":
    text = draw(st.sampled_from(["[]", "null", "5", '"x"', "", " ", "{", "{}}", "{},"]))
    return blob(text, data), op
  elif op == "garbage":
    return draw(st.binary(max_size=64)), op
  b = blob(enc(header, ascii_only), data, pad)
  if text_mut and text_mut[0] == "truncate":
    b = b[:max(0, len(b) - 1 - text_mut[1] % len(b))]
  elif text_mut and text_mut[0] == "length":
    n = struct.unpack("<Q", b[:8])[0] + text_mut[1]
    b = struct.pack("<Q", n % 2**64) + b[8:]
  elif text_mut and text_mut[0] == "flip":
    i = 8 + text_mut[1] % max(1, len(b) - 8)
    if i < len(b):
      b = b[:i] + bytes([b[i] ^ text_mut[2]]) + b[i + 1:]
  return b, op


# ---- the oracle comparison -----------------------------------------------------


def compare_with_official(tmp_path, data: bytes) -> str:
  """Returns 'accepted', 'rejected' or 'stricter'; fails on any disagreement."""
  path = tmp_path / "fuzz.safetensors"
  path.write_bytes(data)
  try:
    official = {name: t for name, t in deserialize(data)}
    official_ok = True
  except Exception:  # pylint: disable=broad-except  (SafetensorError and friends)
    official_ok = False
  try:
    f = jp.io.SafetensorsFile(path)
  except ValueError as e:
    msg = str(e)
    assert str(path) in msg and "\n" not in msg, msg
    if official_ok:  # stricter than the official reader: only where documented
      assert "duplicate key" in msg, f"officially valid file refused: {msg}"
      COUNTS["stricter (duplicate keys)"] += 1
      return "stricter"
    COUNTS["clean rejections"] += 1
    return "rejected"
  assert official_ok, "accepted a file the official reader refuses"
  assert sorted(f.names()) == sorted(official)
  for name, t in official.items():
    s = f.spec(name)
    assert (getattr(s, "dtype_name", t["dtype"]), list(s.shape)) == (t["dtype"], list(t["shape"]))
    got = data[s.offset:s.offset + s.nbytes]
    if getattr(s, "dtype_name", None) not in SUB_BYTE:
      try:
        got = f.read(name).reshape(-1).view(np.uint8).tobytes()
      except ValueError as e:  # a zero-size shape numpy cannot represent: refused by name
        assert s.nbytes == 0 and "cannot be held in memory" in str(e) and str(path) in str(e)
        COUNTS["accepted; zero-size shape too large for numpy, read refused by name"] += 1
    assert got == bytes(t["data"]), name
  f.close()
  COUNTS["accepted, equal to official"] += 1
  return "accepted"


def _report():
  out = os.environ.get("JAXPARAMS_FUZZ_REPORT")
  if out:
    with open(out, "w", encoding="utf-8") as fh:
      json.dump(dict(COUNTS), fh, indent=1)


@pytest.fixture(scope="module", autouse=True)
def _write_counts():
  yield
  _report()


def _valid_case(tmp_path, case):
  header, data, ascii_only, pad = case
  COUNTS["cases"] += 1
  assert compare_with_official(tmp_path, blob(enc(header, ascii_only), data, pad)) == "accepted"


def _mutated_case(tmp_path, case):
  COUNTS["cases"] += 1
  compare_with_official(tmp_path, case[0])


@settings(max_examples=100, **_SETTINGS)
@given(case=valid_files())
def test_valid_files_read_like_the_official_reader(tmp_path_factory, case):
  _valid_case(tmp_path_factory.mktemp("v"), case)


@settings(max_examples=250, **_SETTINGS)
@given(case=mutated_files())
def test_mutated_files_agree_with_the_official_reader(tmp_path_factory, case):
  _mutated_case(tmp_path_factory.mktemp("m"), case)


@pytest.mark.slow
@settings(max_examples=1000, **_SETTINGS)
@given(case=valid_files())
def test_valid_files_many(tmp_path_factory, case):
  _valid_case(tmp_path_factory.mktemp("v"), case)


@pytest.mark.slow
@settings(max_examples=4000, **_SETTINGS)
@given(case=mutated_files())
def test_mutated_files_many(tmp_path_factory, case):
  _mutated_case(tmp_path_factory.mktemp("m"), case)
