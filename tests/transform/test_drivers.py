"""Both drivers run the same record: same results, same checks, same errors."""

import dataclasses
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams.transform as jt
from jaxparams.io import load_safetensors, open_checkpoint, save_safetensors


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixConfig:
  weight: tuple = (1.0, 1.0)
  t: float = 0.5
  noise: float = 0.0


@jax.jit
def _mix_core(base, models, w, t, noise, key):
  # The math is jitted by the record itself (as the merge methods are), so the eager tree
  # driver and the jitted streaming driver compile the same computation.
  avg = sum(w[i] * m.astype(jnp.float32) for i, m in enumerate(models)) / jnp.sum(w)
  out = (1 - t) * base.astype(jnp.float32) + t * avg
  if key is not None:
    out = out + noise * jax.random.normal(key, out.shape)
  return out.astype(base.dtype)


def _mix(base, models, c, key=None):
  w = jnp.stack([jnp.asarray(v, jnp.float32) for v in c.weight])
  return _mix_core(base, tuple(models), w, jnp.asarray(c.t, jnp.float32),
                   jnp.asarray(c.noise, jnp.float32), key)


MIX = jt.Transform(name="mix", fn=_mix, config=MixConfig, array_params=("weight", "t"),
                   checks=(jt.same_shapes, jt.float_inputs, jt.finite,
                           jt.in_range("t", 0.0, 1.0), jt.in_range("weight")),
                   inputs="base+models", base="required", min_models=1,
                   needs_key=lambda c: c.noise != 0.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QConfig:
  bits: int = 4


def _quant(x, c):
  scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / (2 ** (c.bits - 1) - 1)
  q = jnp.round(x / jnp.where(scale == 0, 1, scale)).astype(jnp.int8)
  return {"qweight": q, "scales": scale.astype(jnp.float32)}


QUANT = jt.Transform(name="q", fn=_quant, config=QConfig, checks=(jt.finite,))


def _trees(seed=0, names=("w1", "w2", "w3")):
  rng = np.random.default_rng(seed)
  return [{n: rng.normal(size=(4, 6)).astype(np.float32) for n in names} for _ in range(3)]


def _save(tmp_path, trees):
  for i, t in enumerate(trees):
    save_safetensors(t, tmp_path / f"m{i}")


def _stream(tmp_path, tasks, out="out", **kw):
  readers = {f"m{i}": open_checkpoint(tmp_path / f"m{i}") for i in range(3)}
  try:
    jt.stream_checkpoints(tasks, readers, tmp_path / out, **kw)
  finally:
    for r in readers.values():
      r.close()
  return load_safetensors(tmp_path / out)


def _mix_tasks(names, configs, **kw):
  return [jt.StreamTask(n, (("m0", n), ("m1", n), ("m2", n)), MIX, configs[n], has_base=True,
                        labels=("base", "model 0", "model 1"), **kw) for n in names]


def test_same_results_tree_and_stream(tmp_path):
  trees = _trees()
  _save(tmp_path, trees)
  cfg = MIX.make_config(weight=[1.0, 3.0], t=0.3, noise=0.1)
  key = jax.random.key(7)
  tree_out = jt.apply_tree(MIX, trees[0], trees[1:], config=cfg, key=key)
  stream_out = _stream(tmp_path, _mix_tasks(trees[0], {n: cfg for n in trees[0]}), key=key)
  for n in trees[0]:
    # Same function and per-tensor key; the streaming driver's jit sees hyperparameters that
    # are equal for every tensor as constants, so XLA may round differently (1 ulp).
    np.testing.assert_allclose(np.asarray(tree_out[n]), stream_out[n], rtol=2e-7, atol=1e-7)
  assert np.abs(np.asarray(tree_out["w1"]) - np.asarray(jt.apply_tree(
      MIX, trees[0], trees[1:], config=cfg, key=jax.random.key(8))["w1"])).max() > 1e-3
  # Independent reference for the noiseless math.
  cfg0 = MIX.make_config(weight=[1.0, 3.0], t=0.3)
  out0 = jt.apply_tree(MIX, trees[0], trees[1:], config=cfg0)
  ref = 0.7 * trees[0]["w1"] + 0.3 * (trees[1]["w1"] + 3 * trees[2]["w1"]) / 4
  np.testing.assert_allclose(np.asarray(out0["w1"]), ref, rtol=1e-6)


@pytest.mark.parametrize("bad,match", [
    ("nan_input", r"tensor 'w2': model 1 contains NaN or Inf"),
    ("t_range", r"tensor 'w1': 'mix' parameter t=1.5 is out of range \[0.0, 1.0\]"),
    ("nan_weight", r"'mix' parameter weight=nan \(model 1\)"),
    # (the tree driver checks every leaf's shape up front, the record per tensor)
    ("shape", r"tensor 'w3': shape (mismatch between inputs: base \(4, 6\), model 0 \(4, 6\), "
              r"model 1 \(2, 6\)|\(2, 6\) in model 1 but \(4, 6\) in base)"),
    ("int", r"tensor 'w1': base has dtype int32; 'mix' needs floating-point"),
    ("key", r"is random: pass key="),
])
def test_same_checks_tree_and_stream(tmp_path, bad, match):
  trees = _trees()
  cfg = MIX.make_config()
  key = None
  if bad == "nan_input":
    trees[2]["w2"][1, 1] = np.nan
  elif bad == "t_range":
    cfg = MIX.make_config(t=1.5)
  elif bad == "nan_weight":
    cfg = MIX.make_config(weight=[1.0, float("nan")])
  elif bad == "shape":
    trees[2]["w3"] = trees[2]["w3"][:2]
  elif bad == "int":
    trees = [{n: (v * 10).astype(np.int32) for n, v in t.items()} for t in trees]
  elif bad == "key":
    cfg = MIX.make_config(noise=1.0)
  _save(tmp_path, trees)
  with pytest.raises(ValueError, match=match):
    jt.apply_tree(MIX, trees[0], trees[1:], config=cfg, key=key)
  with pytest.raises(ValueError, match=match):
    _stream(tmp_path, _mix_tasks(trees[0], {n: cfg for n in trees[0]}), key=key)
  assert not os.path.exists(tmp_path / "out")
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


def test_finite_check_can_be_skipped(tmp_path):
  trees = _trees()
  trees[1]["w1"][0, 0] = np.inf
  _save(tmp_path, trees)
  cfg = MIX.make_config()
  out = jt.apply_tree(MIX, trees[0], trees[1:], config=cfg, skip=("finite",))
  got = _stream(tmp_path, _mix_tasks(trees[0], {n: cfg for n in trees[0]}), skip=("finite",))
  assert np.isinf(got["w1"][0, 0]) and np.isinf(np.asarray(out["w1"])[0, 0])


def test_stream_compiles_once_for_varying_array_params(tmp_path):
  traces = []

  def fn(x, c):
    traces.append(1)
    return x * c.factor

  @dataclasses.dataclass(frozen=True, kw_only=True)
  class C:
    factor: float = 1.0

  rec = jt.Transform(name="scale", fn=fn, config=C, array_params=("factor",),
                     checks=(jt.finite, jt.in_range("factor", 0.0, 10.0)))
  trees = _trees()
  _save(tmp_path, trees)
  tasks = [jt.StreamTask(n, (("m0", n),), rec, rec.make_config(factor=f))
           for n, f in zip(trees[0], (1.0, 2.0, 3.0))]
  got = _stream(tmp_path, tasks)
  assert len(traces) == 1
  for n, f in zip(trees[0], (1.0, 2.0, 3.0)):
    np.testing.assert_array_equal(got[n], trees[0][n] * np.float32(f))
  # A traced value is still range-checked on the host, naming the tensor.
  tasks[2] = jt.StreamTask("w3", (("m0", "w3"),), rec, rec.make_config(factor=11.0))
  with pytest.raises(ValueError, match=r"tensor 'w3': 'scale' parameter factor=11.0"):
    _stream(tmp_path, tasks, out="out2")


def test_multi_output_and_copies(tmp_path):
  trees = _trees(names=("layer.weight", "layer.bias"))
  _save(tmp_path, trees)
  tasks = [jt.StreamTask("layer.weight", (("m0", "layer.weight"),), QUANT, None),
           jt.StreamTask("layer.bias", (("m0", "layer.bias"),))]
  got = _stream(tmp_path, tasks)
  assert sorted(got) == ["layer.bias", "layer.qweight", "layer.scales"]
  tree = jt.apply_tree(QUANT, trees[0], where="layer.weight")
  np.testing.assert_array_equal(np.asarray(tree["layer.weight"]["qweight"]), got["layer.qweight"])
  np.testing.assert_array_equal(got["layer.bias"], trees[0]["layer.bias"])
  assert got["layer.qweight"].dtype == np.int8
  np.testing.assert_array_equal(np.asarray(tree["layer.bias"]), trees[0]["layer.bias"])


@pytest.mark.parametrize("kw,match", [
    ({"out_shape": (6, 4)}, r"has shape \(4, 6\), expected \(6, 4\)"),
    ({"out_dtype": np.float16}, "has dtype float32, expected float16")])
def test_copies_are_checked_against_out_shape_and_dtype(tmp_path, kw, match):
  _save(tmp_path, _trees())
  ok = jt.StreamTask("w1", (("m0", "w1"),), out_shape=(4, 6), out_dtype=np.float32)
  assert sorted(_stream(tmp_path, [ok], out="ok")) == ["w1"]
  with pytest.raises(ValueError, match=match):
    _stream(tmp_path, [jt.StreamTask("w2", (("m0", "w2"),), **kw)])
  assert not (tmp_path / "out").exists()


def test_run_tasks_into_the_callers_writer_with_emit(tmp_path):
  from jaxparams.io import SafetensorsWriter
  trees = _trees(names=("layer.weight", "layer.bias"))
  _save(tmp_path, trees)
  tasks = [jt.StreamTask("layer.weight", (("m0", "layer.weight"),), QUANT, None),
           jt.StreamTask("layer.bias", (("m0", "layer.bias"),))]
  seen = []

  def emit(task, outs):
    seen.append((task.name, [n for n, _ in outs]))
    return [(n, v) for n, v in outs if not n.endswith("scales")]

  with open_checkpoint(tmp_path / "m0") as r, SafetensorsWriter(tmp_path / "out") as w:
    w.add("first", np.zeros(2, np.float32))       # the caller's own tensors, before the tasks
    info = jt.run_tasks(tasks, {"m0": r}, w, emit=emit)
  assert info["tensors"] == 2
  assert seen == [("layer.weight", ["layer.qweight", "layer.scales"]),
                  ("layer.bias", ["layer.bias"])]
  assert sorted(load_safetensors(tmp_path / "out")) == ["first", "layer.bias", "layer.qweight"]


def test_tree_driver_where_vmap_grad_jit():
  trees = _trees()
  out = jt.apply_tree(MIX, trees[0], trees[1:], where="w2")
  np.testing.assert_array_equal(np.asarray(out["w1"]), trees[0]["w1"])
  with pytest.raises(ValueError, match="matches none"):
    jt.apply_tree(MIX, trees[0], trees[1:], where="nothing*")
  ts = jnp.array([0.0, 1.0])
  grid = jax.vmap(lambda t: jt.apply_tree(MIX, trees[0], trees[1:], config=MIX.make_config(t=t))
                  )(ts)
  np.testing.assert_allclose(np.asarray(grid["w1"][0]), trees[0]["w1"])

  def loss(t):
    out = jt.apply_tree(MIX, trees[0], trees[1:], config=MIX.make_config(t=t))
    return jnp.sum(out["w1"])
  g = jax.grad(loss)(0.5)
  expect = np.sum((trees[1]["w1"] + trees[2]["w1"]) / 2 - trees[0]["w1"])
  np.testing.assert_allclose(float(g), expect, rtol=1e-4)
  jitted = jax.jit(lambda b, ms: jt.apply_tree(MIX, b, ms))(trees[0], trees[1:])
  np.testing.assert_allclose(np.asarray(jitted["w3"]), np.asarray(
      jt.apply_tree(MIX, trees[0], trees[1:])["w3"]), rtol=1e-6)


def test_tree_driver_keeps_sharding():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]), ("d",))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  trees = [{"w": jax.device_put(np.full((8, 4), float(i), np.float32), spec)} for i in range(3)]
  out = jt.apply_tree(MIX, trees[0], trees[1:])
  assert out["w"].sharding.is_equivalent_to(spec, 2)


def test_stream_interrupt_stops_prefetch_and_leaves_nothing(tmp_path):
  trees = _trees()
  _save(tmp_path, trees)
  cfg = MIX.make_config()

  def progress(done, total, nbytes):
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    _stream(tmp_path, _mix_tasks(trees[0], {n: cfg for n in trees[0]}), progress=progress,
            prefetch=1)
  assert not [t for t in threading.enumerate() if t.name == "jaxparams-prefetch"]
  assert not [p for p in os.listdir(tmp_path) if "out" in p]


def test_registry_and_config_errors():
  reg = jt.Registry("test transform", [MIX, QUANT])
  assert reg.names() == ["mix", "q"]
  with pytest.raises(ValueError, match="unknown test transform 'mx'; valid names: mix, q"):
    reg.get("mx")
  with pytest.raises(ValueError, match=r"already registered"):
    reg.register(MIX)
  with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['tt'\]; valid parameters: "
                                       r"\['noise', 't', 'weight'\]"):
    MIX.make_config(tt=1.0)
  # The generic record names itself a transform (an area may name its kind: 'merge method').
  with pytest.raises(ValueError, match=r"^transform 'mix' needs at least 1 non-base model\(s\), "
                                       r"got 0"):
    jt.apply_tree(MIX, _trees()[0], [])
  with pytest.raises(ValueError, match="^transform 'mix' requires a base model"):
    jt.apply_tree(MIX, None, _trees()[1:])
  with pytest.raises(ValueError, match="^merge method 'mix' requires a base model"):
    jt.apply_tree(dataclasses.replace(MIX, kind="merge method"), None, _trees()[1:])


def test_stream_sigint_is_deferred_to_a_tensor_boundary(tmp_path):
  import signal  # pylint: disable=import-outside-toplevel
  trees = _trees()
  _save(tmp_path, trees)
  cfg = MIX.make_config()
  seen = []

  def progress(done, total, nbytes):
    seen.append(done)
    if done == 1:
      os.kill(os.getpid(), signal.SIGINT)  # handled: a flag, raised before the next tensor

  with pytest.raises(KeyboardInterrupt):
    _stream(tmp_path, _mix_tasks(trees[0], {n: cfg for n in trees[0]}), progress=progress)
  assert seen == [1]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  assert not [p for p in os.listdir(tmp_path) if "out" in p]
