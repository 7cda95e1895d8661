"""Streaming merges of HF safetensors checkpoints (jaxparams.merge.stream)."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from jaxparams.io import load_safetensors, open_checkpoint, save_safetensors
from jaxparams.merge.registry import get_method
from jaxparams.merge.stream import merge_checkpoints, tensor_key
from jaxparams.demo.tiny_llama import llama_config, write_llama

# Every 2-D tensor is 16x16 and every 1-D one has 16 entries: two shapes, few compiles.
CFG = llama_config(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=4)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  d = tmp_path_factory.mktemp("ckpts")
  base = write_llama(d / "base", cfg=CFG, seed=0)
  a = write_llama(d / "a", like=base, noise=0.05, seed=1)
  b = write_llama(d / "b", like=base, noise=0.05, seed=2)
  (base / "tokenizer_config.json").write_text('{"model_max_length": 128}')
  return {"base": str(base), "a": str(a), "b": str(b), "root": d}


def _leftovers(folder):
  return [p for p in os.listdir(folder) if ".tmp-" in p]


def test_ties_gradient_stream_equals_per_tensor_reference(ckpts, tmp_path):
  recipe = {
      "merge_method": "ties", "base_model": ckpts["base"],
      "models": [{"model": ckpts["base"]},
                 {"model": ckpts["a"], "parameters": {"weight": 0.6, "density": [0.2, 0.8]}},
                 {"model": ckpts["b"], "parameters": {
                     "weight": [{"filter": "self_attn", "value": 0.3}, {"value": 0.5}],
                     "density": 0.5}}],
      "parameters": {"normalize": True}, "dtype": "float32",
      "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}
  out = tmp_path / "out"
  summary = merge_checkpoints(recipe, out, progress=False)
  got = load_safetensors(out)
  base, a, b = (load_safetensors(ckpts[k]) for k in ("base", "a", "b"))
  assert summary["tensors"] == len(base) == len(got)
  m = get_method("ties")
  n_layers = CFG["num_hidden_layers"]
  for name in base:
    layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
    t = 0.0 if layer is None else layer / (n_layers - 1)
    dens_a = 0.2 + 0.6 * t  # the gradient [0.2, 0.8], interpolated by hand
    w_b = 0.3 if "self_attn" in name else 0.5
    want = m.merge_tensor(base[name], [a[name], b[name]],
                          model_params={"weight": [0.6, w_b], "density": [dens_a, 0.5]},
                          global_params={"normalize": True}, name=name)
    chex.assert_trees_all_close(got[name], np.asarray(want), atol=1e-6, rtol=1e-6)
  # config.json and tokenizer files come from the base.
  assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == n_layers
  tc = json.loads((out / "tokenizer_config.json").read_text())
  assert tc == {"model_max_length": 128, "chat_template": recipe["chat_template"]}


def test_stream_equals_tree_driver(ckpts, tmp_path):
  import jaxparams as jp  # pylint: disable=import-outside-toplevel
  base, a, b = (load_safetensors(ckpts[k]) for k in ("base", "a", "b"))
  recipe = {"merge_method": "dare_ties", "base_model": ckpts["base"],
            "models": [{"model": ckpts["a"], "parameters": {"weight": 0.7, "density": 0.4}},
                       {"model": ckpts["b"], "parameters": {"weight": 0.3, "density": 0.6}}],
            "dtype": "float32"}
  merge_checkpoints(recipe, tmp_path / "s", seed=7, progress=False)
  got = load_safetensors(tmp_path / "s")
  key = jax.random.key(7)
  tree = jp.merge.dare_ties(base, [a, b], weights=[0.7, 0.3], density=[0.4, 0.6], key=key)
  chex.assert_trees_all_close(got, jax.tree.map(np.asarray, tree), atol=1e-6, rtol=1e-6)
  # and per tensor, with the documented per-tensor key
  name = "model.layers.1.mlp.up_proj.weight"
  want = get_method("dare_ties").merge_tensor(
      base[name], [a[name], b[name]], model_params={"weight": [0.7, 0.3], "density": [0.4, 0.6]},
      key=tensor_key(key, name), name=name)
  np.testing.assert_allclose(got[name], want, atol=1e-6)


def test_sharded_across_devices_equals_unsharded(ckpts, tmp_path):
  assert len(jax.devices()) == 8  # tests/conftest.py: 8 fake CPU devices
  recipe = {"merge_method": "ties", "base_model": ckpts["base"],
            "models": [{"model": ckpts["a"], "parameters": {"weight": 0.6, "density": 0.5}},
                       {"model": ckpts["b"], "parameters": {"weight": 0.4, "density": 0.3}}],
            "dtype": "float32"}
  merge_checkpoints(recipe, tmp_path / "one", progress=False)
  merge_checkpoints(recipe, tmp_path / "many", progress=False, shard=True, shard_min_bytes=0)
  chex.assert_trees_all_close(load_safetensors(tmp_path / "many"),
                              load_safetensors(tmp_path / "one"), atol=1e-6, rtol=1e-6)


def test_passthrough_slices_stack_layers_and_load(ckpts, tmp_path):
  recipe = {"merge_method": "passthrough", "slices": [
      {"sources": [{"model": ckpts["a"], "layer_range": [0, 3]}]},
      {"sources": [{"model": ckpts["b"], "layer_range": [1, 3]}]}]}
  out = tmp_path / "stack"
  merge_checkpoints(recipe, out, progress=False, max_shard_bytes=4096)
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["num_hidden_layers"] == 5
  assert (out / "model.safetensors.index.json").is_file()  # sharded at 4 kB
  got = load_safetensors(out)
  a, b = load_safetensors(ckpts["a"]), load_safetensors(ckpts["b"])
  for src, i, j in [(a, 0, 0), (a, 2, 2), (b, 1, 3), (b, 2, 4)]:
    np.testing.assert_array_equal(got[f"model.layers.{j}.mlp.down_proj.weight"],
                                  src[f"model.layers.{i}.mlp.down_proj.weight"])
  np.testing.assert_array_equal(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
  np.testing.assert_array_equal(got["lm_head.weight"], b["lm_head.weight"])
  from jaxparams.models import from_hf  # pylint: disable=import-outside-toplevel
  _, params, mcfg = from_hf(out)
  assert mcfg.num_hidden_layers == 5
  import jaxparams as jp  # pylint: disable=import-outside-toplevel
  tops = {p.split("/")[0] for p in jp.tree.flatten(params)}
  assert sorted(t for t in tops if t.startswith("layers_")) == [f"layers_{i}" for i in range(5)]


def test_gradient_and_filter_select_per_layer(ckpts, tmp_path):
  # weight [0, 1] over 3 layers -> 0, .5, 1; a filter sends mlp tensors fully to the model.
  recipe = {"merge_method": "task_arithmetic", "base_model": ckpts["base"],
            "models": [{"model": ckpts["a"], "parameters": {
                "weight": [{"filter": "mlp", "value": 1.0}, {"value": [0.0, 1.0]}]}}],
            "dtype": "float32"}
  # (read-ahead limited to one tensor at a time: prefetch_bytes=1 still always lets one through)
  merge_checkpoints(recipe, tmp_path / "g", progress=False, prefetch=1, prefetch_bytes=1)
  got = load_safetensors(tmp_path / "g")
  base, a = load_safetensors(ckpts["base"]), load_safetensors(ckpts["a"])
  q = "model.layers.{}.self_attn.q_proj.weight"
  np.testing.assert_allclose(got[q.format(0)], base[q.format(0)], atol=1e-7)
  np.testing.assert_allclose(got[q.format(1)], (base[q.format(1)] + a[q.format(1)]) / 2, atol=1e-6)
  np.testing.assert_allclose(got[q.format(2)], a[q.format(2)], atol=1e-6)
  np.testing.assert_allclose(got["model.layers.0.mlp.up_proj.weight"],
                             a["model.layers.0.mlp.up_proj.weight"], atol=1e-6)
  np.testing.assert_allclose(got["lm_head.weight"], base["lm_head.weight"], atol=1e-7)  # t=0


def test_bf16_inputs_out_dtype(ckpts, tmp_path):
  root = ckpts["root"]
  x = write_llama(root / "x16", like=ckpts["a"], dtype="bfloat16")
  y = write_llama(root / "y16", like=ckpts["b"], dtype="bfloat16")
  recipe = {"merge_method": "slerp", "base_model": str(x),
            "models": [{"model": str(x)}, {"model": str(y)}], "parameters": {"t": 0.3},
            "out_dtype": "float32"}
  merge_checkpoints(recipe, tmp_path / "o", progress=False)
  with open_checkpoint(tmp_path / "o") as ck:
    assert {str(ck.spec(n).dtype) for n in ck.names()} == {"float32"}


# ---------------------------------------------------------------------------------------------
# Bad input: each refused with a message naming what is wrong; nothing is left behind.


def _lin(*models, **extra):
  return dict({"merge_method": "linear",
               "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in models]},
              **extra)


def test_different_tensor_sets(ckpts, tmp_path):
  t = load_safetensors(ckpts["a"])
  del t["model.layers.2.mlp.up_proj.weight"]
  odd = tmp_path / "odd"
  save_safetensors(t, odd, config=CFG)
  with pytest.raises(ValueError, match=r"different tensor sets: tensor "
                     r"'model.layers.2.mlp.up_proj.weight' is in '.*/a' but missing from '.*/odd'"):
    merge_checkpoints(_lin(ckpts["a"], odd), tmp_path / "out", progress=False)
  assert not (tmp_path / "out").exists()


def test_different_shapes(ckpts, tmp_path):
  t = load_safetensors(ckpts["a"])
  t["model.norm.weight"] = np.ones(17, np.float32)
  odd = tmp_path / "odd"
  save_safetensors(t, odd, config=CFG)
  with pytest.raises(ValueError, match=r"tensor 'model.norm.weight' has shape \(16,\) in model "
                     r"'.*/a' but \(17,\) in model '.*/odd'"):
    merge_checkpoints(_lin(ckpts["a"], odd), tmp_path / "out", progress=False)


def test_vocab_sizes_differ_without_tokenizer_source(ckpts, tmp_path):
  t = load_safetensors(ckpts["a"])
  for k in ("model.embed_tokens.weight", "lm_head.weight"):
    t[k] = np.concatenate([t[k], np.zeros((2, 16), np.float32)])
  big = tmp_path / "big"
  save_safetensors(t, big, config=dict(CFG, vocab_size=18))
  with pytest.raises(ValueError, match=r"vocabulary sizes differ for tensor '.*': 16 rows in "
                     r"'.*/a' but 18 in '.*/big'; set tokenizer_source"):
    merge_checkpoints(_lin(ckpts["a"], big), tmp_path / "out", progress=False)


def test_nan_input_mid_merge_leaves_nothing(ckpts, tmp_path):
  t = load_safetensors(ckpts["b"])
  t["model.norm.weight"][3] = np.nan  # one of the last tensors: earlier ones are already written
  bad = tmp_path / "nan"
  save_safetensors(t, bad, config=CFG)
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=r"tensor 'model.norm.weight': model '.*/nan' contains "
                     "NaN or Inf; fix the checkpoint or pass allow_nonfinite=True"):
    merge_checkpoints(_lin(ckpts["a"], bad), out, progress=False)
  assert not out.exists() and not _leftovers(tmp_path)
  merge_checkpoints(_lin(ckpts["a"], bad), out, progress=False, allow_nonfinite=True)
  assert np.isnan(load_safetensors(out)["model.norm.weight"][3])


def test_ctrl_c_mid_merge_leaves_nothing(ckpts, tmp_path, monkeypatch):
  from jaxparams.io import safetensors_writer  # pylint: disable=import-outside-toplevel
  calls = {"n": 0}
  orig = safetensors_writer.SafetensorsWriter.add

  def add(self, name, arr):
    calls["n"] += 1
    if calls["n"] == 5:
      raise KeyboardInterrupt
    return orig(self, name, arr)

  monkeypatch.setattr(safetensors_writer.SafetensorsWriter, "add", add)
  out = tmp_path / "out"
  with pytest.raises(KeyboardInterrupt):
    merge_checkpoints(_lin(ckpts["a"], ckpts["b"]), out, progress=False, max_shard_bytes=1024)
  assert calls["n"] == 5 and not out.exists() and not _leftovers(tmp_path)


def test_output_exists_refused(ckpts, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
    merge_checkpoints(_lin(ckpts["a"], ckpts["b"]), out, progress=False)
  assert (out / "keep.txt").read_text() == "x"
  merge_checkpoints(_lin(ckpts["a"], ckpts["b"]), out, progress=False, overwrite=True)
  assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_pickle_input_refused(ckpts, tmp_path):
  pk = tmp_path / "pk"
  pk.mkdir()
  (pk / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
  with pytest.raises(ValueError, match="refusing pickle checkpoint"):
    merge_checkpoints(_lin(ckpts["a"], pk), tmp_path / "out", progress=False)


def test_unknown_method_and_parameter(ckpts, tmp_path):
  with pytest.raises(ValueError, match="unknown merge method 'tie'; valid methods: .*ties"):
    merge_checkpoints(dict(_lin(ckpts["a"]), merge_method="tie"), tmp_path / "o", progress=False)
  bad = _lin(ckpts["a"], ckpts["b"], parameters={"densty": 0.5})
  with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['densty'\] for merge_method "
                     r"'linear'; valid: \['normalize', 'weight'\]"):
    merge_checkpoints(bad, tmp_path / "o", progress=False)


def test_parameter_out_of_range_and_missing_base(ckpts, tmp_path):
  della = {"merge_method": "della", "base_model": ckpts["base"],
           "models": [{"model": ckpts["a"], "parameters": {
               "weight": 1.0, "density": 0.5, "epsilon": [0.1, 0.6]}}]}
  with pytest.raises(ValueError, match=r"epsilon must be chosen such that density \+/- epsilon "
                     r"is in \(0, 1\)"):
    merge_checkpoints(della, tmp_path / "o", progress=False)
  nobase = {"merge_method": "ties", "models": [{"model": ckpts["a"],
                                                "parameters": {"weight": 1.0}}]}
  with pytest.raises(ValueError, match="merge_method 'ties' needs a base model .*set base_model"):
    merge_checkpoints(nobase, tmp_path / "o", progress=False)
  zero = {"merge_method": "linear", "models": [
      {"model": ckpts["a"], "parameters": {"weight": 1.0}},
      {"model": ckpts["b"], "parameters": {"weight": -1.0}}]}
  with pytest.raises(ValueError, match=r"weights \[1.0, -1.0\] sum to zero with normalize=true"):
    merge_checkpoints(zero, tmp_path / "o", progress=False)
  with pytest.raises(FileNotFoundError, match="model '/nonexistent/m' not found"):
    merge_checkpoints(_lin("/nonexistent/m"), tmp_path / "o", progress=False)
  assert not (tmp_path / "o").exists()


def test_layer_range_past_end(ckpts, tmp_path):
  recipe = {"merge_method": "passthrough", "slices": [
      {"sources": [{"model": ckpts["a"], "layer_range": [2, 5]}]}]}
  with pytest.raises(ValueError, match=r"layer_range \[2, 5\] of model '.*/a' goes past its 3 "
                     "layers"):
    merge_checkpoints(recipe, tmp_path / "o", progress=False)


def test_reader_thread_error_reaches_caller_and_leaves_nothing(ckpts, tmp_path, monkeypatch):
  # the reader thread lives in the transform layer's prefetcher
  from jaxparams.transform import prefetch as stream  # pylint: disable=import-outside-toplevel
  calls = {"n": 0}

  class FlakyFile:

    def __init__(self, path, mode):
      self.f = open(path, mode)  # pylint: disable=consider-using-with

    def seek(self, offset):
      return self.f.seek(offset)

    def readinto(self, buf):
      calls["n"] += 1
      if calls["n"] == 9:  # mid-merge, in the reader thread
        raise OSError("disk error in the reader thread")
      return self.f.readinto(buf)

    def close(self):
      self.f.close()

  monkeypatch.setattr(stream, "open", FlakyFile, raising=False)
  out = tmp_path / "out"
  with pytest.raises(OSError, match="disk error in the reader thread"):
    merge_checkpoints(_lin(ckpts["a"], ckpts["b"]), out, progress=False, max_shard_bytes=1024)
  assert calls["n"] == 9 and not out.exists() and not _leftovers(tmp_path)
