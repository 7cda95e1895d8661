"""The strict YAML reader's bounds are exact, and the input limits refuse before allocating."""

import os

import pytest

from jaxparams.io import input_guard, limits
from jaxparams.io.recipe_yaml import parse_recipe_yaml, read_recipe_yaml


def _laughs(levels, fanout):
  lines = ["l0: &l0 [" + ", ".join(["x"] * fanout) + "]"]
  lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i-1}"] * fanout) + "]" for i in range(1, levels)]
  return "\n".join(lines) + "\n"


def _expanded(levels, fanout):
  """Values once every alias is a copy: the top mapping, its keys, and each level's list."""
  per_level = [1 + fanout]  # a list of `fanout` scalars
  for _ in range(1, levels):
    per_level.append(1 + fanout * per_level[-1])
  return 1 + levels + sum(per_level)


@pytest.mark.parametrize("levels,fanout", [(3, 4), (4, 5), (5, 3)])
def test_alias_expansion_is_counted_exactly(levels, fanout):
  text = _laughs(levels, fanout)
  n = _expanded(levels, fanout)
  assert parse_recipe_yaml(text, max_values=n)["l0"] == ["x"] * fanout
  with pytest.raises(ValueError, match=f"more than {n - 1} values"):
    parse_recipe_yaml(text, max_values=n - 1)


def test_merge_keys_count_and_duplicates():
  assert parse_recipe_yaml("a: &a {x: 1}\nb: {<<: *a, y: 2}\n")["b"] == {"x": 1, "y": 2}
  with pytest.raises(ValueError, match="duplicate key 'y'"):
    parse_recipe_yaml("b: {y: 1, y: 2}\n")
  with pytest.raises(ValueError, match="recursive alias"):
    parse_recipe_yaml("a: &a [1, *a]\n")


def test_file_size_checked_before_reading(tmp_path):
  p = tmp_path / "r.yml"
  p.write_text("a: 1\n" + "#" * 100 + "\n")
  with pytest.raises(ValueError, match="more than the limit of 64 bytes"):
    read_recipe_yaml(p, max_bytes=64)
  with pytest.raises(FileNotFoundError):
    read_recipe_yaml(tmp_path / "missing.yml")


@pytest.mark.parametrize("spec,expected", [("1", [1]), ("0, 2-3", [0, 2, 3]), ("3-3", [3])])
def test_layer_ranges(spec, expected):
  assert limits.parse_index_ranges(spec, count=4) == expected


@pytest.mark.parametrize("spec", ["4", "0-4", "-1", "1-", "a", "3-1", "", "0-" + "9" * 30])
def test_layer_ranges_refused(spec):
  with pytest.raises(ValueError, match="--layers"):
    limits.parse_index_ranges(spec, count=4)


def test_pad_to_multiple_of_bounds():
  assert limits.check_pad_to_multiple_of(64, where="p", rows=100) == 64
  for bad in (0, -8, True, 2.0, 10**9):
    with pytest.raises(ValueError, match="p"):
      limits.check_pad_to_multiple_of(bad, where="p")
  with pytest.raises(ValueError, match="more than the vocabulary's 100 rows"):
    limits.check_pad_to_multiple_of(4096, where="p", rows=100)


def test_input_guard_sees_same_size_rewrite_with_mtime_restored(tmp_path):
  f = tmp_path / "m.safetensors"
  f.write_bytes(b"abcdefgh")
  snap = input_guard.snapshot_inputs([tmp_path])
  st = os.stat(f)
  with open(f, "r+b") as h:
    h.write(b"ABCD")
  os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back (ctime may share its tick)
  with pytest.raises(ValueError, match="m.safetensors changed while it was being read"):
    input_guard.check_unchanged(snap, context="merge")
