"""Fuzzing sharded indexes: whatever `model.safetensors.index.json` says, opening the folder
either reads shards inside it or fails with one ValueError/FileNotFoundError naming the index;
a file outside the folder (by '..', absolute path or symlink) is never read."""

import json
import os

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import jaxparams as jp

_SETTINGS = dict(deadline=None, database=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))
SECRET = 12345.0  # the value only the outside file holds


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("idx")
  jp.io.write_safetensors_file(root / "outside.safetensors", {"w0": np.full(4, SECRET, np.float32)})
  model = root / "model"
  jp.io.save_safetensors({f"w{i}": np.full(4, i, np.float32) for i in range(3)}, model,
                         max_shard_bytes=16)
  (model / "link-out.safetensors").symlink_to(root / "outside.safetensors")
  (model / "sub").mkdir()
  (model / "sub" / "link-in.safetensors").symlink_to(model / "model-00001-of-00003.safetensors")
  return root, model


SHARDS = st.sampled_from([
    "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "missing.safetensors",
    "../outside.safetensors", "{root}/outside.safetensors", "link-out.safetensors",
    "sub/link-in.safetensors", "sub/../../outside.safetensors", "./model-00003-of-00003.safetensors",
    "", ".", "sub", "/", "model.safetensors.index.json", "a\x00b"]) | st.text(max_size=8)
VALUES = SHARDS | st.none() | st.integers() | st.lists(st.text(max_size=3), max_size=2) | \
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)


@st.composite
def indexes(draw):
  kind = draw(st.sampled_from(["map", "map", "map", "raw"]))
  if kind == "raw":
    return draw(st.sampled_from(["", "[]", "null", "{", '{"weight_map": 3}', "\udcff",
                                 '{"weight_map": {}}', '{"metadata": [], "weight_map": {}}']))
  wm = draw(st.dictionaries(st.sampled_from(["w0", "w1", "w2", "ghost"]), VALUES, max_size=4))
  idx = {"weight_map": wm}
  if draw(st.booleans()):
    idx["metadata"] = draw(st.none() | st.integers() | st.dictionaries(st.text(max_size=3),
                                                                       st.integers(), max_size=2))
  return json.dumps(idx)


def _case(world, text):
  root, model = world
  text = text.replace("{root}", str(root))
  (model / jp.io.INDEX_NAME).write_bytes(text.encode("utf-8", "surrogateescape"))
  try:
    with jp.io.open_checkpoint(model) as ck:
      for n in ck.names():
        assert os.path.realpath(ck.spec(n).file).startswith(str(model.resolve()) + os.sep)
        assert SECRET not in ck.read(n)
  except (ValueError, FileNotFoundError) as e:
    msg = str(e)
    assert "\n" not in msg and str(model) in msg, msg


@settings(max_examples=80, **_SETTINGS)
@given(text=indexes())
def test_index_fuzz(world, text):
  _case(world, text)


@pytest.mark.slow
@settings(max_examples=1500, **_SETTINGS)
@given(text=indexes())
def test_index_fuzz_many(world, text):
  _case(world, text)
