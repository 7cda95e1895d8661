"""Recipe parsing: mergekit YAML unchanged, filters, gradients, slices, ml-collections."""

import textwrap
from pathlib import Path

import pytest

from jaxparams.merge.recipe import (UNSET, evaluate_setting, load_recipe, parse_recipe,
                                    resolve_setting)

REPO = Path(__file__).resolve().parents[2]

TIES_YAML = """\
merge_method: ties
base_model: ./base
models:
  - model: ./base
  - model: ./math
    parameters:
      weight: 0.6
      density: [0.3, 0.7]
  - model: ./code
    parameters:
      weight:
        - filter: self_attn
          value: 0.2
        - value: 0.4
      density: 1e-1
parameters:
  normalize: true
  lambda: 1.0
dtype: bfloat16
out_dtype: float32
tokenizer_source: union
"""

SLICES_YAML = """\
slices:
  - sources:
      - model: a
        layer_range: [0, 4]
  - sources:
      - model: b
        layer_range: [2, 6]
merge_method: passthrough
dtype: float16
"""


def test_parse_mergekit_yaml(tmp_path):
  p = tmp_path / "ties.yml"
  p.write_text(TIES_YAML)
  r = load_recipe(p)
  assert r.merge_method == "ties" and r.base_model == "./base"
  assert [m.model for m in r.models] == ["./base", "./math", "./code"]
  assert r.models[1].parameters == {"weight": 0.6, "density": [0.3, 0.7]}
  # PyYAML reads 1e-1 as a string; mergekit's validator makes it a number.
  assert r.models[2].parameters["density"] == 0.1
  assert r.models[2].parameters["weight"] == [{"filter": "self_attn", "value": 0.2},
                                              {"filter": None, "value": 0.4}]
  assert r.parameters == {"normalize": True, "lambda": 1.0}
  assert (r.dtype, r.out_dtype, r.tokenizer_source) == ("bfloat16", "float32", "union")
  assert r.model_names() == ["./base", "./math", "./code"]
  assert r.parameter_names() == {"weight", "density", "normalize", "lambda"}


def test_parse_slices(tmp_path):
  p = tmp_path / "s.yaml"
  p.write_text(SLICES_YAML)
  r = load_recipe(p)
  assert r.models is None and len(r.slices) == 2
  assert [s.sources[0].layer_range for s in r.slices] == [(0, 4), (2, 6)]
  assert sum(s.num_layers for s in r.slices) == 8
  assert r.dtype == "float16"


def test_gradient_interpolation_matches_mergekit_rule():
  # mergekit: scaled = t * (n - 1); lerp between the two neighbouring entries.
  g = [0.0, 1.0, 0.0]
  assert evaluate_setting(g, "x", 0.0) == 0.0
  assert evaluate_setting(g, "x", 0.25) == pytest.approx(0.5)
  assert evaluate_setting(g, "x", 0.5) == 1.0
  assert evaluate_setting(g, "x", 0.75) == pytest.approx(0.5)
  assert evaluate_setting(g, "x", 1.0) == 0.0
  assert evaluate_setting([0.2, 0.6], "x", 1 / 3) == pytest.approx(0.2 + 0.4 / 3)
  # Booleans and strings pick an element instead of interpolating.
  assert evaluate_setting([True, False], "x", 0.4) is True
  assert evaluate_setting([True, False], "x", 1.0) is False


def test_filters_first_match_and_fallthrough():
  s = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.7},
       {"filter": None, "value": 0.1}]
  assert evaluate_setting(s, "model.layers.3.self_attn.q_proj.weight", 0.5) == 0.5
  assert evaluate_setting(s, "model.layers.3.mlp.up_proj.weight", 0.5) == 0.7
  assert evaluate_setting(s, "lm_head.weight", 0.0) == 0.1
  assert evaluate_setting([{"filter": "mlp", "value": 1}], "lm_head.weight") is None
  assert evaluate_setting([{"filter": "*", "value": 3}], "anything") == 3


def test_precedence_model_over_slice_over_global():
  scopes = [{"weight": 0.3}, {"weight": 0.5, "density": 0.9}, {"weight": 1.0, "lambda": 2.0}]
  assert resolve_setting("weight", scopes, "x") == 0.3
  assert resolve_setting("density", scopes, "x") == 0.9
  assert resolve_setting("lambda", scopes, "x") == 2.0
  assert resolve_setting("gamma", scopes, "x") is UNSET
  # A filter that does not match falls through to the next scope.
  scopes = [{"weight": [{"filter": "mlp", "value": 9.0}]}, {"weight": 1.0}]
  assert resolve_setting("weight", scopes, "model.layers.0.self_attn.q_proj.weight") == 1.0
  assert resolve_setting("weight", scopes, "model.layers.0.mlp.up_proj.weight") == 9.0


def test_ml_collections_config_equals_yaml(tmp_path):
  py = load_recipe(REPO / "configs" / "merge_ties_example.py")
  yml = tmp_path / "ex.yml"
  yml.write_text(textwrap.dedent("""\
      merge_method: ties
      base_model: ./checkpoints/base
      models:
        - model: ./checkpoints/base
        - model: ./checkpoints/math
          parameters: {weight: 0.6, density: 0.5}
        - model: ./checkpoints/code
          parameters:
            weight:
              - {filter: self_attn, value: 0.3}
              - {value: 0.4}
            density: [0.3, 0.7]
      parameters: {normalize: true, lambda: 1.0}
      dtype: float32
      tokenizer_source: base
      """))
  ref = load_recipe(yml)
  assert py.merge_method == ref.merge_method and py.base_model == ref.base_model
  assert py.models == ref.models and py.parameters == ref.parameters
  assert (py.dtype, py.tokenizer_source) == (ref.dtype, ref.tokenizer_source)


@pytest.mark.parametrize("data,msg", [
    ({"models": [{"model": "a"}]}, "'merge_method' is required"),
    ({"merge_method": "linear"}, "exactly one of 'models' and 'slices'"),
    ({"merge_method": "linear", "models": [{"model": "a"}],
      "slices": [{"sources": [{"model": "a", "layer_range": [0, 1]}]}]},
     "exactly one of 'models' and 'slices'"),
    ({"merge_method": "linear", "models": [{"model": "a"}], "bogus": 1},
     "unknown key(s) ['bogus']"),
    ({"merge_method": "linear", "models": [{"model": "a", "params": {}}]},
     "unknown key(s) ['params']"),
    ({"merge_method": "linear", "models": [{"model": "a"}], "dtype": "int4"},
     "unknown dtype 'int4'"),
    ({"merge_method": "passthrough",
      "slices": [{"sources": [{"model": "a", "layer_range": [3, 1]}]}]},
     "0 <= start < stop"),
    ({"merge_method": "slerp",
      "slices": [{"sources": [{"model": "a", "layer_range": [0, 2]},
                              {"model": "b", "layer_range": [0, 3]}]}]},
     "same number of layers"),
    ({"merge_method": "linear", "models": [{"model": "a"}], "tokenizer_source": "zzz"},
     "tokenizer_source 'zzz' is neither"),
    ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": {"x": 1}}}]},
     "expected a scalar, a gradient"),
    ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": []}}]},
     "empty list"),
    ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": float("nan")}}]},
     "not finite"),
    ({"merge_method": "linear", "models": [{"model": "a"}],
      "tokenizer": {"source": "base", "tokens": {"<x>": {"source": "a"}}}},
     "tokenizer.tokens (per-token embedding overrides) is not supported"),
    ({"merge_method": "linear", "models": [{"model": "a"}], "tokenizer_source": "base",
      "tokenizer": {"source": "base"}}, "either 'tokenizer_source' or 'tokenizer'"),
    ({"merge_method": "linear", "models": [{"model": "a"}], "chat_template": "chatml"},
     "only a literal Jinja template is supported"),
])
def test_bad_recipes(data, msg):
  with pytest.raises(ValueError, match=None) as e:
    parse_recipe(data)
  assert msg in str(e.value)


def test_missing_recipe_file_and_bad_yaml(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such recipe file"):
    load_recipe(tmp_path / "nope.yml")
  bad = tmp_path / "bad.yml"
  bad.write_text("merge_method: [unclosed\n")
  with pytest.raises(ValueError, match="invalid YAML"):
    load_recipe(bad)


def test_model_reference_resolution(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
  (tmp_path / "m").mkdir()
  rec = tmp_path / "r.yml"
  rec.write_text("merge_method: linear\nmodels: [{model: m}]\n")
  r = load_recipe(rec)
  assert r.resolve_model("m") == tmp_path / "m"  # relative to the recipe's folder
  with pytest.raises(FileNotFoundError, match="not found locally or in the Hugging Face cache"):
    r.resolve_model("meta-llama/Llama-3-8B")
