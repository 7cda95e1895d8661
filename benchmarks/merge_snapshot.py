"""Saves the outputs of every merge method (tree API, per-tensor registry, streaming driver,
recipes of tests/merge) to an .npz, or compares a new run with a saved one bit for bit.

Used to prove that a refactor of jaxparams.merge changes no output bit:

  .venv/bin/python benchmarks/merge_snapshot.py save /tmp/merge_before.npz   # before
  .venv/bin/python benchmarks/merge_snapshot.py compare /tmp/merge_before.npz  # after

Only public API calls are used, so the same script runs before and after.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import jaxparams as jp
import jaxparams.merge  # noqa: F401
from jaxparams.io import load_safetensors
from jaxparams.merge import get_method, merge_checkpoints, merge_trees

try:  # the test helpers moved out of the merge area
  from jaxparams.demo.tiny_llama import llama_config, llama_tensors, write_llama
except ImportError:  # before the move
  from jaxparams.merge.testing import llama_config, llama_tensors, write_llama

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "mergekit_methods"


def _np(x):
  return np.asarray(jax.device_get(x))


def mergekit_cases(out):
  cases = json.loads((FIX / "cases.json").read_text())["cases"]
  arrays = dict(np.load(FIX / "cases.npz"))
  for i, c in enumerate(cases):
    xs = [arrays[k] for k in c["inputs"]]
    base, models = (xs[0], xs[1:]) if c["with_base"] else (None, xs)
    o = get_method(c["method"]).merge_tensor(
        None if base is None else jnp.asarray(base), [jnp.asarray(m) for m in models],
        model_params=c["model_params"], global_params=c["global_params"], name="t")
    out[f"case/{i}/{c['method']}/registry"] = _np(o)
    tb = None if base is None else {"t": base}
    t = merge_trees(c["method"], tb, [{"t": m} for m in models], model_params=c["model_params"],
                    global_params=c["global_params"])
    out[f"case/{i}/{c['method']}/tree"] = _np(t["t"])
  # random methods, per tensor and as trees
  x = arrays[cases[0]["inputs"][0]]
  rng = np.random.default_rng(0)
  base = rng.standard_normal((32, 24)).astype(np.float32)
  ms = [base + 0.1 * rng.standard_normal(base.shape).astype(np.float32) for _ in range(3)]
  key = jax.random.key(3)
  for name in ("dare_ties", "dare_linear", "della", "della_linear"):
    for dens in (0.3, 0.7, 1.0):
      mp = {"weight": [0.5, 0.3, 0.2], "density": dens}
      o = get_method(name).merge_tensor(base, ms, model_params=mp, key=key, name="r")
      out[f"random/{name}/{dens}/registry"] = _np(o)
      t = merge_trees(name, {"r": base}, [{"r": m} for m in ms], model_params=mp, key=key)
      out[f"random/{name}/{dens}/tree"] = _np(t["r"])
  del x


def tree_wrappers(out):
  cfg = llama_config(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4)
  base = llama_tensors(cfg, 0)
  rng = np.random.default_rng(5)
  a, b, c = ({k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
              for k, v in base.items()} for _ in range(3))
  key = jax.random.key(11)
  m = jp.merge
  calls = {
      "linear": lambda: m.linear([a, b, c], [0.2, 0.3, 0.5]),
      "linear_nonorm": lambda: m.linear([a, b], [0.2, 0.3], normalize=False),
      "slerp": lambda: m.slerp(base, a, 0.3),
      "nuslerp": lambda: m.nuslerp(base, [a, b], weights=[0.3, 0.7]),
      "nuslerp_rows": lambda: m.nuslerp(None, [a, b], weights=[0.3, 0.7], nuslerp_flatten=False),
      "multislerp": lambda: m.multislerp(base, [a, b, c], weights=[0.2, 0.3, 0.5]),
      "karcher": lambda: m.karcher([a, b, c]),
      "task_arithmetic": lambda: m.task_arithmetic(base, [a, b], weights=[0.6, 0.4], lam=0.9),
      "ties": lambda: m.ties(base, [a, b, c], weights=[0.5, 0.3, 0.2], density=0.4),
      "ties_model": lambda: m.ties(base, [a, b], density=0.4, trim_scope="model"),
      "dare_linear": lambda: m.dare_linear(base, [a, b], density=0.5, key=key),
      "dare_ties": lambda: m.dare_ties(base, [a, b], density=0.5, key=key),
      "dare_inverse": lambda: m.dare_linear(base, [a, b], density=0.5, key=key,
                                            rescale="inverse"),
      "breadcrumbs": lambda: m.breadcrumbs(base, [a, b], density=0.8, gamma=0.05),
      "breadcrumbs_ties": lambda: m.breadcrumbs_ties(base, [a, b], density=0.8, gamma=0.05),
      "della": lambda: m.della(base, [a, b], density=0.5, key=key),
      "della_linear": lambda: m.della_linear(base, [a, b], density=0.5, epsilon=0.1, key=key),
      "sce": lambda: m.sce(base, [a, b, c], select_topk=0.5),
      "sce_all": lambda: m.sce(base, [a, b, c]),
      "ram": lambda: m.ram(base, [a, b]),
      "ramplus_tl": lambda: m.ramplus_tl(base, [a, b]),
      "model_stock": lambda: m.model_stock(base, [a, b, c]),
      "model_stock_fw": lambda: m.model_stock(base, [a, b], filter_wise=True),
      "nearswap": lambda: m.nearswap(base, a, 0.01),
      "arcee_fusion": lambda: m.arcee_fusion(base, a),
      "passthrough": lambda: m.passthrough(a, 2.0),
      "ties_where": lambda: m.ties(base, [a, b], density=0.5, where="**mlp**"),
  }
  for name, fn in calls.items():
    for k, v in jp.tree.flatten(fn()).items():
      out[f"tree/{name}/{k}"] = _np(v)
  # vmapped and jitted forms
  grid = jax.vmap(lambda w: m.task_arithmetic(base, [a, b], weights=w))(
      jnp.array([[1.0, 0.0], [0.5, 0.5]]))
  out["tree/vmap_ta/lm_head.weight"] = _np(grid["lm_head.weight"])
  j = jax.jit(lambda t: m.slerp(base, a, t))(0.25)
  out["tree/jit_slerp/lm_head.weight"] = _np(j["lm_head.weight"])


def task_vectors(out):
  rng = np.random.default_rng(9)
  base = {"a": rng.standard_normal((8, 5)).astype(np.float32),
          "b": {"c": rng.standard_normal(7).astype(np.float32)}}
  m1 = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(np.float32), base)
  m2 = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(np.float32), base)
  tv1, tv2 = jp.merge.task_vector(m1, base), jp.merge.task_vector(m2, base)
  res = {"tv": tv1, "apply": jp.merge.apply_task_vectors(base, [tv1, tv2], [0.5, 2.0]),
         "neg": jp.merge.apply_task_vectors(m1, [tv1], negate=True),
         "port": jp.merge.port_patch(m2, base, m1, scale=0.7),
         "vmap": jax.vmap(lambda s: jp.merge.apply_task_vectors(base, [tv1, tv2], s))(
             jnp.array([[1.0, 0.0], [0.3, 0.6]]))}
  for name, tree in res.items():
    for k, v in jp.tree.flatten(tree).items():
      out[f"tv/{name}/{k}"] = _np(v)


def stream(out, d: pathlib.Path):
  cfg = llama_config(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=4)
  base = str(write_llama(d / "base", cfg=cfg, seed=0))
  a = str(write_llama(d / "a", like=base, noise=0.05, seed=1))
  b = str(write_llama(d / "b", like=base, noise=0.05, seed=2))
  c = str(write_llama(d / "c", like=base, noise=0.05, seed=3))
  x16 = str(write_llama(d / "x16", like=a, dtype="bfloat16"))
  y16 = str(write_llama(d / "y16", like=b, dtype="bfloat16"))

  def mdl(p, **params):
    return {"model": p, "parameters": params} if params else {"model": p}

  gta = lambda meth, **g: {"merge_method": meth, "base_model": base,  # noqa: E731
                           "models": [mdl(a, weight=0.6, density=0.5),
                                      mdl(b, weight=0.4, density=0.7)],
                           "parameters": g, "dtype": "float32"}
  recipes = {
      "linear": {"merge_method": "linear", "models": [mdl(a, weight=1.0), mdl(b, weight=2.0)]},
      "slerp": {"merge_method": "slerp", "base_model": base, "models": [mdl(base), mdl(a)],
                "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                     {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                                     {"value": 0.5}]}},
      "nuslerp": {"merge_method": "nuslerp", "models": [mdl(a, weight=0.3), mdl(b, weight=0.7)]},
      "nuslerp_base": {"merge_method": "nuslerp", "base_model": base,
                       "models": [mdl(a, weight=0.3), mdl(b, weight=0.7)],
                       "parameters": {"nuslerp_flatten": False}},
      "multislerp": {"merge_method": "multislerp", "base_model": base,
                     "models": [mdl(a, weight=0.3), mdl(b, weight=0.3), mdl(c, weight=0.4)]},
      "karcher": {"merge_method": "karcher", "models": [mdl(a), mdl(b), mdl(c)],
                  "parameters": {"max_iter": 5}},
      "task_arithmetic": gta("task_arithmetic", **{"lambda": 0.8}),
      "ties": gta("ties"),
      "dare_ties": gta("dare_ties"),
      "dare_linear": gta("dare_linear"),
      "breadcrumbs": gta("breadcrumbs"),
      "breadcrumbs_ties": gta("breadcrumbs_ties"),
      "della": gta("della"),
      "della_linear": gta("della_linear"),
      "sce": {"merge_method": "sce", "base_model": base, "models": [mdl(a), mdl(b), mdl(c)],
              "parameters": {"select_topk": 0.5}},
      "ram": {"merge_method": "ram", "base_model": base, "models": [mdl(a), mdl(b)]},
      "ramplus_tl": {"merge_method": "ramplus_tl", "base_model": base,
                     "models": [mdl(a), mdl(b)]},
      "model_stock": {"merge_method": "model_stock", "base_model": base,
                      "models": [mdl(a), mdl(b), mdl(c)]},
      "nearswap": {"merge_method": "nearswap", "base_model": base, "models": [mdl(a)],
                   "parameters": {"t": 0.02}},
      "arcee_fusion": {"merge_method": "arcee_fusion", "base_model": base, "models": [mdl(a)]},
      "passthrough": {"merge_method": "passthrough", "slices": [
          {"sources": [{"model": a, "layer_range": [0, 3]}]},
          {"sources": [{"model": b, "layer_range": [1, 3]}]}]},
      # recipes of tests/merge/test_stream_merge.py
      "test_ties_gradient": {
          "merge_method": "ties", "base_model": base,
          "models": [{"model": base},
                     {"model": a, "parameters": {"weight": 0.6, "density": [0.2, 0.8]}},
                     {"model": b, "parameters": {
                         "weight": [{"filter": "self_attn", "value": 0.3}, {"value": 0.5}],
                         "density": 0.5}}],
          "parameters": {"normalize": True}, "dtype": "float32",
          "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"},
      "test_dare_ties": {"merge_method": "dare_ties", "base_model": base,
                         "models": [mdl(a, weight=0.7, density=0.4),
                                    mdl(b, weight=0.3, density=0.6)], "dtype": "float32"},
      "test_gradient_filter": {"merge_method": "task_arithmetic", "base_model": base,
                               "models": [{"model": a, "parameters": {
                                   "weight": [{"filter": "mlp", "value": 1.0},
                                              {"value": [0.0, 1.0]}]}}], "dtype": "float32"},
      "test_bf16": {"merge_method": "slerp", "base_model": x16,
                    "models": [mdl(x16), mdl(y16)], "parameters": {"t": 0.3},
                    "out_dtype": "float32"},
      "bf16_ties": {"merge_method": "ties", "base_model": x16,
                    "models": [mdl(y16, weight=1.0, density=0.5)]},
  }
  for name, recipe in recipes.items():
    o = d / f"out_{name}"
    kw = {"seed": 7} if name == "test_dare_ties" else {}
    if name == "test_gradient_filter":
      kw = {"prefetch": 1, "prefetch_bytes": 1}
    merge_checkpoints(recipe, o, progress=False, **kw)
    for k, v in load_safetensors(o).items():
      out[f"stream/{name}/{k}"] = v.view(np.uint16) if v.dtype.itemsize == 2 else v
    out[f"stream/{name}/config.json"] = np.frombuffer((o / "config.json").read_bytes(), np.uint8)
  # sharded across the 8 fake devices
  merge_checkpoints(recipes["ties"], d / "sharded", progress=False, shard=True, shard_min_bytes=0)
  for k, v in load_safetensors(d / "sharded").items():
    out[f"stream/sharded_ties/{k}"] = v


SECTIONS = ("cases", "tree", "tv", "stream")


def run(sections=SECTIONS) -> dict[str, np.ndarray]:
  out: dict[str, np.ndarray] = {}
  if "cases" in sections:
    mergekit_cases(out)
  if "tree" in sections:
    tree_wrappers(out)
  if "tv" in sections:
    task_vectors(out)
  if "stream" in sections:
    with tempfile.TemporaryDirectory() as d:
      stream(out, pathlib.Path(d))
  return out


def main(argv):
  """``save|compare PATH[,PATH...] [section,...]``."""
  mode, path = argv[1], argv[2]
  sections = tuple(argv[3].split(",")) if len(argv) > 3 else SECTIONS
  out = run(sections)
  if mode == "save":
    np.savez(path, **out)
    print(f"saved {len(out)} arrays to {path}")
    return 0
  ref = {}
  for p in path.split(","):
    ref.update(np.load(p))
  missing = sorted(set(ref) - set(out))
  extra = sorted(set(out) - set(ref))
  diff = [k for k in sorted(set(ref) & set(out))
          if ref[k].dtype != out[k].dtype or ref[k].shape != out[k].shape
          or ref[k].tobytes() != out[k].tobytes()]
  print(f"compared {len(set(ref) & set(out))} arrays: {len(diff)} differ, {len(missing)} missing,"
        f" {len(extra)} new")
  for k in diff[:20]:
    print("  DIFF", k, float(np.max(np.abs(ref[k].astype(np.float64) - out[k].astype(np.float64))))
          if ref[k].shape == out[k].shape else "shape")
  for k in missing[:20]:
    print("  MISSING", k)
  return 1 if diff or missing else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
