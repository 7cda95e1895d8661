"""Merge methods are transform records: one definition, checks run by both drivers.

Also the input checks of issue 10 (item 10): NaN/Inf inputs, NaN or out-of-range
hyperparameters and integer tensors are refused (or copied, as mergekit does) by the tree
API and the streaming merge alike, naming the tensor.
"""

import ast
import inspect
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.merge  # noqa: F401
from jaxparams.io import load_safetensors, save_safetensors
from jaxparams.merge import METHODS, get_method, merge_checkpoints, merge_trees
from jaxparams.merge.params import global_defaults, model_defaults
from jaxparams.transform import Transform

MERGE_DIR = pathlib.Path(jp.merge.__file__).parent


def test_every_method_is_a_record_and_the_cli_lists_the_registry():
  names = METHODS.names()
  assert len(names) == 20
  for n in names:
    assert isinstance(METHODS.get(n), Transform)
    assert get_method(n).record is METHODS.get(n)
  from jaxparams.cli.main import build_parser  # pylint: disable=import-outside-toplevel
  sub = build_parser()._subparsers._group_actions[0].choices["merge"]  # pylint: disable=protected-access
  assert f"Methods: {', '.join(names)}." in sub.description


def test_method_modules_do_not_import_the_registry():
  for f in MERGE_DIR.glob("methods_*.py"):
    tree = ast.parse(f.read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "jaxparams.merge.registry" not in mods, f


_WRAPPER_ARG = {"weights": "weight", "lam": "lambda"}


@pytest.mark.parametrize("name", sorted(set(METHODS.names()) & set(jp.merge.__all__)))
def test_tree_wrapper_defaults_are_the_records(name):
  fn = getattr(jp.merge, name)
  cfg = METHODS.get(name).config
  defaults = {**model_defaults(cfg), **global_defaults(cfg)}
  not_params = {"where", "key", "implementation", "trim_scope", "models", "model", "base",
                "other", "weights"}
  for pname, p in inspect.signature(fn).parameters.items():
    if p.default is inspect.Parameter.empty or pname in not_params:
      continue
    mk = _WRAPPER_ARG.get(pname, pname)
    assert mk in defaults, (name, pname)  # every hyperparameter of a wrapper is the record's
    assert p.default == defaults[mk], (name, pname, p.default, defaults[mk])


def test_plan_reads_the_base_policy_from_the_record():
  src = (MERGE_DIR / "plan.py").read_text()
  assert "linear" not in src.split('"""', 2)[2] or "BASE_IGNORED" not in src
  assert get_method("linear").base_policy == "ignored"


# -- issue 10 item 10: both drivers refuse bad inputs, naming the tensor ------------------------

RNG = np.random.default_rng(0)
BASE = {"w": RNG.standard_normal((4, 6)).astype(np.float32),
        "pos": np.arange(6, dtype=np.int32)}
A = {"w": BASE["w"] + 0.1, "pos": BASE["pos"].copy()}
B = {"w": BASE["w"] - 0.2, "pos": BASE["pos"].copy()}


def _ckpts(tmp_path, trees):
  out = []
  for i, t in enumerate(trees):
    save_safetensors(t, tmp_path / f"m{i}")
    out.append(str(tmp_path / f"m{i}"))
  return out


def _recipe(method, paths, base=True, model_params=None, params=None):
  models = [{"model": p, "parameters": dict(model_params or {})} for p in paths[1:]]
  r = {"merge_method": method, "models": models, "parameters": dict(params or {})}
  if base:
    r["base_model"] = paths[0]
  else:
    r["models"] = [{"model": paths[0], "parameters": dict(model_params or {})}] + models
  return r


CASES = [
    # method, model params, global params, tree-API call, error
    ("slerp", {}, {"t": float("nan")}, lambda: jp.merge.slerp(BASE, A, float("nan")),
     r"'slerp' parameter t=nan"),
    ("slerp", {}, {"t": 1.5}, lambda: jp.merge.slerp(BASE, A, 1.5),
     r"'slerp' parameter t=1.5 is out of range \[0.0, 1.0\]"),
    ("linear", {"weight": [1.0, float("nan")]}, {},
     lambda: jp.merge.linear([BASE, A], [1.0, float("nan")]),
     r"'linear' parameter weight=nan \(model 1\)"),
    ("ties", {"weight": 1.0, "density": 1.5}, {},
     lambda: jp.merge.ties(BASE, [A, B], density=1.5),
     r"'ties' parameter density=1.5 \(model 0\) is out of range \[0.0, 1.0\]"),
    ("breadcrumbs", {"weight": 1.0, "gamma": -0.1}, {},
     lambda: jp.merge.breadcrumbs(BASE, [A, B], density=0.9, gamma=-0.1),
     r"'breadcrumbs' parameter gamma=-0.1 \(model 0\) is out of range"),
    ("task_arithmetic", {"weight": 1.0}, {"lambda": float("inf")},
     lambda: jp.merge.task_arithmetic(BASE, [A, B], lam=float("inf")),
     r"'task_arithmetic' parameter lambda=inf"),
    ("nearswap", {}, {"t": -1.0}, lambda: jp.merge.nearswap(BASE, A, -1.0),
     r"'nearswap' parameter t=-1.0 is out of range \[0.0, inf\]"),
]


@pytest.mark.parametrize("method,mp,gp,tree_call,match", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_hyperparameters_refused_by_both_drivers(tmp_path, method, mp, gp, tree_call,
                                                     match):
  with pytest.raises(ValueError, match=match):
    tree_call()
  base = get_method(method).base_policy != "ignored"
  paths = _ckpts(tmp_path, [BASE, A, B][:2 if get_method(method).max_models == 1 else 3])
  # (the recipe parser already refuses NaN/Inf values, naming the parameter)
  with pytest.raises(ValueError, match=match + r"|value (nan|inf) is not finite"):
    merge_checkpoints(_recipe(method, paths, base, mp, gp), tmp_path / "out", progress=False)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["slerp", "ties", "linear", "model_stock"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_inputs_refused_by_both_drivers(tmp_path, method, bad):
  a = {"w": A["w"].copy(), "pos": A["pos"]}
  a["w"][2, 3] = bad
  m = get_method(method)
  mp = {"weight": 1.0} if "weight" in m.model_params else {}
  gp = {"t": 0.5} if "t" in m.global_params else {}
  if "density" in m.model_params:
    mp["density"] = 0.5
  trees = [BASE, a, B][:2 if m.max_models == 1 else 3]
  base = m.base_policy != "ignored"
  with pytest.raises(ValueError, match=r"tensor 'w': model (0|1) contains NaN or Inf"):
    merge_trees(method, trees[0] if base else None, trees[1:] if base else trees,
                model_params=mp, global_params=gp)
  paths = _ckpts(tmp_path, trees)
  with pytest.raises(ValueError, match=r"tensor 'w': model '.*m1' contains NaN or Inf"):
    merge_checkpoints(_recipe(method, paths, base, mp, gp), tmp_path / "out", progress=False)


def test_integer_tensors_copied_when_identical_refused_when_different(tmp_path):
  # mergekit (merge_methods/buffers.py): a non-floating buffer is copied when every input
  # agrees and refused when they differ; it is never averaged as floats.
  out = jp.merge.ties(BASE, [A, B], density=0.5)
  assert out["pos"].dtype == np.int32
  np.testing.assert_array_equal(np.asarray(out["pos"]), BASE["pos"])
  paths = _ckpts(tmp_path, [BASE, A, B])
  merge_checkpoints(_recipe("ties", paths, True, {"weight": 1.0, "density": 0.5}),
                    tmp_path / "ok", progress=False)
  got = load_safetensors(tmp_path / "ok")
  assert got["pos"].dtype == np.int32
  np.testing.assert_array_equal(got["pos"], BASE["pos"])
  np.testing.assert_array_equal(got["w"], np.asarray(out["w"]))
  odd = {"w": A["w"], "pos": A["pos"] + 1}
  with pytest.raises(ValueError, match=r"tensor 'pos': non-float tensor differs between model 0 "
                                       r"and model 1"):
    jp.merge.linear([BASE, odd])
  (tmp_path / "odd").mkdir()
  paths = _ckpts(tmp_path / "odd", [BASE, odd])
  with pytest.raises(ValueError, match=r"tensor 'pos': non-float tensor differs between model "
                                       r"'.*m0' and model '.*m1'"):
    merge_checkpoints(_recipe("linear", paths, False, {"weight": 1.0}), tmp_path / "o2",
                      progress=False)


def test_mergekit_behaviour_kept_where_deliberate():
  # negative weights subtract a task (forgetting by negation); density 0 keeps nothing
  out = jp.merge.task_arithmetic(BASE, [A], weights=[-1.0])
  np.testing.assert_allclose(np.asarray(out["w"]), BASE["w"] - 0.1, rtol=1e-6)
  out = jp.merge.ties(BASE, [A], density=0.0)
  np.testing.assert_array_equal(np.asarray(out["w"]), BASE["w"])
  # NaN checks cannot raise under a trace: vmap over weights still works
  ws = jnp.array([[1.0, 0.0], [0.5, 0.5]])
  grid = jax.vmap(lambda w: jp.merge.linear([BASE, A], w, where="w"))(ws)
  np.testing.assert_allclose(np.asarray(grid["w"][0]), BASE["w"])
