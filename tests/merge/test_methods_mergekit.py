"""Every deterministic method against mergekit 0.1.5's own outputs (fixtures).

Fixtures: tests/fixtures/make_mergekit_fixture.py (run in the torch venv).
Both drivers are checked: the registry (``merge_tensor``) and the tree API.
"""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.merge  # noqa: F401  (jp.merge)
from jaxparams.merge import get_method, merge_trees

FIX = pathlib.Path(__file__).parent.parent / "fixtures" / "mergekit_methods"
ALL_CASES = json.loads((FIX / "cases.json").read_text())["cases"]
CASES = [c for c in ALL_CASES if c.get("dtype", "float32") == "float32"]
BF16_CASES = [c for c in ALL_CASES if c.get("dtype") == "bfloat16"]
ARRAYS = dict(np.load(FIX / "cases.npz"))


def _inputs(case):
  xs = [ARRAYS[k] for k in case["inputs"]]
  return (xs[0], xs[1:]) if case["with_base"] else (None, xs)


def _rel_err(out, ref):
  return float(np.max(np.abs(np.asarray(out, np.float64) - ref)) / max(np.abs(ref).max(), 1e-30))


@pytest.mark.parametrize("idx", range(len(CASES)),
                         ids=[f"{c['method']}-{i}" for i, c in enumerate(CASES)])
def test_registry_matches_mergekit(idx):
  case = CASES[idx]
  base, models = _inputs(case)
  out = get_method(case["method"]).merge_tensor(
      None if base is None else jnp.asarray(base), [jnp.asarray(m) for m in models],
      model_params=case["model_params"], global_params=case["global_params"], name="t")
  assert out.shape == tuple(case["shape"]) and out.dtype == jnp.float32
  assert _rel_err(out, ARRAYS[case["output"]]) <= 1e-6


def test_tree_api_matches_mergekit_all_methods():
  # One tree per method: every fixture of that method becomes a leaf.
  by_method = {}
  for i, c in enumerate(CASES):
    key = (c["method"], c["with_base"], json.dumps(c["model_params"]),
           json.dumps(c["global_params"]), len(c["inputs"]))
    by_method.setdefault(key, []).append(c)
  assert len({k[0] for k in by_method}) == 18  # all deterministic mergekit methods
  for (method, with_base, _, _, _), cases in by_method.items():
    n_in = len(cases[0]["inputs"])
    trees = [{f"leaf{j}": ARRAYS[c["inputs"][i]] for j, c in enumerate(cases)}
             for i in range(n_in)]
    base, models = (trees[0], trees[1:]) if with_base else (None, trees)
    out = merge_trees(method, base, models, model_params=cases[0]["model_params"],
                      global_params=cases[0]["global_params"])
    for j, c in enumerate(cases):
      assert _rel_err(out[f"leaf{j}"], ARRAYS[c["output"]]) <= 1e-6, (method, c)


@pytest.mark.parametrize("case", BF16_CASES,
                         ids=[f"{c['method']}-{'x'.join(map(str, c['shape']))}" for c in BF16_CASES])
def test_bfloat16_merges_match_mergekit_bit_for_bit(case):
  """mergekit computes in the merge's dtype, rounding every op; arcee_fusion's importance
  threshold is a hard decision, so float32 math would keep other elements."""
  base, models = _inputs(case)
  bf = lambda x: jnp.asarray(x).astype(jnp.bfloat16)
  out = get_method(case["method"]).merge_tensor(
      bf(base), [bf(m) for m in models], model_params=case["model_params"],
      global_params=case["global_params"], name="t")
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)),
                                np.asarray(bf(ARRAYS[case["output"]]).astype(jnp.float32)))
