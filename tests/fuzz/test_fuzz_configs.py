"""Fuzzed mergekit recipes and tampered quantization layouts: one clean error, never a traceback.

Recipes: random YAML-like mappings built from mergekit's keys with values of every JSON type go
through :func:`jaxparams.merge.recipe.parse_recipe`; it returns a recipe or raises ``ValueError``
(``FileNotFoundError`` for a model path that does not exist), nothing else. Quantized folders:
every field of a real ``jaxparams_quant.json`` is replaced by values of other types and ranges,
and ``jaxparams dequantize`` must exit 2 with one line, or succeed.
"""

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxparams.demo
from jaxparams.cli.main import main as cli_main
from jaxparams.merge.recipe import parse_recipe

_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=8))
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner,
                                                                       max_size=3)), max_leaves=6)
_keys = ["merge_method", "base_model", "models", "parameters", "dtype", "slices", "tokenizer_source",
         "out_dtype", "model", "weight", "density", "t", "layer_range", "sources", "filter",
         "value"]
_model = st.fixed_dictionaries({}, optional={"model": _value, "parameters": _value})
_recipe = st.fixed_dictionaries(
    {"merge_method": st.one_of(st.sampled_from(["ties", "linear", "slerp", "dare_ties"]), _value)},
    optional={k: st.one_of(_value, st.lists(_model, max_size=3)) for k in _keys
              if k != "merge_method"})


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(_recipe)
def test_fuzzed_recipes_parse_or_raise_value_error(data):
  try:
    parse_recipe(data, source="fuzz.yml")
  except (ValueError, FileNotFoundError):
    pass


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
  out = tmp_path_factory.mktemp("q") / "q"
  src = jaxparams.demo.write_example(tmp_path_factory.mktemp("ex") / "ex") / "tiny-llama-base"
  assert cli_main(["quantize", str(src), str(out), "--method", "rtn", "--bits", "4",
                   "--group-size", "32", "--no-progress"]) == 0
  return out


_bad = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**70), st.floats(allow_nan=True),
                 st.text(max_size=6), st.lists(st.integers(-2, 5), max_size=4),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_tampered_quant_layout_is_one_clean_error(quantized, tmp_path_factory, data):
  layout = json.loads((quantized / "jaxparams_quant.json").read_text())
  paths = []

  def walk(node, path):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, path + (k,))
    elif isinstance(node, list):
      for i, v in enumerate(node):
        walk(v, path + (i,))
    paths.append(path)

  walk(layout, ())
  path = data.draw(st.sampled_from([p for p in paths if p]))
  value = data.draw(_bad)
  node = layout
  for k in path[:-1]:
    node = node[k]
  node[path[-1]] = value
  work = tmp_path_factory.mktemp("t")
  folder = work / "q"
  shutil.copytree(quantized, folder)
  (folder / "jaxparams_quant.json").write_text(json.dumps(layout))
  rc = cli_main(["dequantize", str(folder), str(work / "out")])
  assert rc in (0, 2)
  if rc == 2:
    assert not (work / "out").exists()
