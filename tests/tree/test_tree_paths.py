"""jp.tree: paths, selectors, ops and summary."""

import dataclasses
import re

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxparams as jp


def _params():
  return {
      "embed": {"embedding": jnp.arange(6.0).reshape(3, 2)},
      "layers": [
          {"mlp": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)},
           "attn": {"kernel": 2 * jnp.ones((2, 2))}},
          {"mlp": {"kernel": 3 * jnp.ones((2, 2)), "bias": jnp.zeros(2)},
           "attn": {"kernel": 4 * jnp.ones((2, 2))}},
      ],
  }


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Pair:
  w: jax.Array
  b: jax.Array


@pytest.mark.parametrize("tree", [
    _params(),
    flax.core.FrozenDict({"a": {"b": jnp.ones(2)}, "c": jnp.zeros(1)}),
    {"t": (jnp.ones(1), [jnp.zeros(2), jnp.ones(3)])},
    {"pair": _Pair(jnp.ones(2), jnp.zeros(2))},
    nnx.state(nnx.Linear(3, 4, rngs=nnx.Rngs(0))),
], ids=["dict-list", "frozendict", "tuple-list", "dataclass", "nnx-state"])
def test_flatten_unflatten_round_trip(tree):
  flat = jp.tree.flatten(tree)
  assert all(isinstance(k, str) for k in flat)
  back = jp.tree.unflatten(flat, like=tree)
  assert jax.tree.structure(back) == jax.tree.structure(tree)
  chex.assert_trees_all_equal(back, tree)


def test_paths_are_slash_joined():
  assert list(jp.tree.flatten(_params()))[:3] == [
      "embed/embedding", "layers/0/attn/kernel", "layers/0/mlp/bias"]
  assert sorted(jp.tree.flatten(nnx.state(nnx.Linear(3, 4, rngs=nnx.Rngs(0))))) == [
      "bias", "kernel"]
  assert jp.tree.flatten({"pair": _Pair(1, 2)}) == {"pair/w": 1, "pair/b": 2}


def test_unflatten_without_template_builds_dicts():
  assert jp.tree.unflatten({"a/b": 1, "a/c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
  with pytest.raises(ValueError, match="missing"):
    jp.tree.unflatten({"a": 1}, like={"a": 0, "b": 0})


@pytest.mark.parametrize("where,expected", [
    ("layers/*/mlp/kernel", ["layers/0/mlp/kernel", "layers/1/mlp/kernel"]),
    ("**/bias", ["layers/0/mlp/bias", "layers/1/mlp/bias"]),
    ("layers/[1]/attn/*", ["layers/1/attn/kernel"]),
    (re.compile(r"layers/\d+/(attn|mlp)/kernel"),
     ["layers/0/attn/kernel", "layers/0/mlp/kernel", "layers/1/attn/kernel", "layers/1/mlp/kernel"]),
    ("re:layers/1/.*", ["layers/1/attn/kernel", "layers/1/mlp/bias", "layers/1/mlp/kernel"]),
    (["embed/*", "**/attn/*"], ["embed/embedding", "layers/0/attn/kernel", "layers/1/attn/kernel"]),
    (lambda p, x: x.ndim == 1, ["layers/0/mlp/bias", "layers/1/mlp/bias"]),
], ids=["glob", "doublestar", "charset", "regex", "re-prefix", "union", "predicate"])
def test_select(where, expected):
  assert jp.tree.select(_params(), where) == expected


def test_glob_star_stays_within_component():
  assert jp.tree.select(_params(), "layers/*", strict=False) == []


def test_select_mask_tree():
  mask = jax.tree.map(lambda x: x.ndim == 2 and x.shape[0] == 3, _params())
  assert jp.tree.select(_params(), mask) == ["embed/embedding"]


def test_rules_first_match():
  rules = [("**/bias", None), ("layers/0/**", "int8"), ("**", "int4")]
  got = jp.tree.resolve_rules(_params(), rules)
  assert got["layers/0/mlp/bias"] is None
  assert got["layers/0/mlp/kernel"] == "int8"
  assert got["layers/1/attn/kernel"] == "int4"
  assert got["embed/embedding"] == "int4"
  assert jp.tree.select(_params(), rules) == [p for p, v in got.items() if v]


def test_nothing_matches_is_an_error_naming_pattern_and_nearby_paths():
  with pytest.raises(jp.tree.NoMatchError, match=r"glob 'layers/\*/mpl/kernel'.*layers/0/mlp"):
    jp.tree.select(_params(), "layers/*/mpl/kernel")
  with pytest.raises(ValueError, match="rule 1"):
    jp.tree.resolve_rules(_params(), [("**/kernel", 1), ("**/kernal", 2)])
  with pytest.raises(ValueError, match="already claimed"):
    jp.tree.resolve_rules(_params(), [("**", 1), ("**/kernel", 2)])
  with pytest.raises(ValueError, match="matches none"):
    jp.tree.map(lambda x: x, _params(), where=lambda p, x: False)


def test_map_partition_combine_cast():
  p = _params()
  doubled = jp.tree.map(lambda x: 2 * x, p, where="layers/*/mlp/kernel")
  np.testing.assert_array_equal(doubled["layers"][1]["mlp"]["kernel"], 6.0)
  np.testing.assert_array_equal(doubled["layers"][1]["attn"]["kernel"], 4.0)
  sel, rest = jp.tree.partition(p, "**/attn/*")
  assert sel["layers"][0]["mlp"]["kernel"] is None and rest["layers"][0]["attn"]["kernel"] is None
  chex.assert_trees_all_equal(jp.tree.combine(sel, rest), p)
  c = jp.tree.cast({"w": jnp.ones(2), "n": jnp.arange(2)}, jnp.bfloat16)
  assert c["w"].dtype == jnp.bfloat16 and c["n"].dtype == jnp.int32


def test_works_under_jit():
  @jax.jit
  def f(p):
    return jp.tree.cast(jp.tree.map(lambda x: x + 1, p, where="**/kernel"), jnp.bfloat16)
  out = f(_params())
  assert out["layers"][0]["mlp"]["kernel"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out["layers"][0]["mlp"]["kernel"], np.float32), 2.0)
  np.testing.assert_array_equal(np.asarray(out["layers"][0]["mlp"]["bias"], np.float32), 0.0)


def test_diff_and_allclose():
  a = _params()
  b = jp.tree.map(lambda x: x + 1e-3, a, where="layers/1/mlp/kernel")
  rows = jp.tree.diff(a, b)
  assert [(r.path, r.kind) for r in rows] == [("layers/1/mlp/kernel", "value")]
  assert rows[0].max_abs == pytest.approx(1e-3, rel=1e-2)
  assert jp.tree.allclose(a, b, atol=1e-2) and not jp.tree.allclose(a, b)
  c = dict(a, extra=jnp.ones(1))
  assert ("extra", "missing_in_a") in [(r.path, r.kind) for r in jp.tree.diff(a, c)]
  d = jp.tree.map(lambda x: x.astype(jnp.bfloat16), a, where="embed/*")
  assert jp.tree.diff(a, d)[0].kind == "dtype"
  # named records (issue 26 item 3) that still unpack as the 4-tuples they were
  row = rows[0]
  assert row._fields == ("path", "kind", "max_abs", "max_rel")
  assert repr(row).startswith("LeafDiff(path='layers/1/mlp/kernel', kind='value', max_abs=")
  path, kind, max_abs, max_rel = row
  assert (path, kind, max_abs, max_rel) == tuple(row) and row._asdict()["kind"] == "value"


def test_summary_statistics_against_numpy():
  p = _params()
  s = jp.tree.summary(p)
  assert s.params == sum(x.size for x in jax.tree.leaves(p))
  assert s.bytes == sum(x.nbytes for x in jax.tree.leaves(p))
  row = {r.path: r for r in s.rows}["embed/embedding"]
  x = np.arange(6.0)
  assert row.shape == (3, 2) and row.dtype == "float32"
  np.testing.assert_allclose([row.mean, row.std, row.absmax, row.zeros],
                             [x.mean(), x.std(), 5.0, 1 / 6], rtol=1e-6)
  text = str(s)
  assert "embed/embedding" in text and "total" in text
