"""from_hf / to_hf round trips, name maps and error messages."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.models as jm

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TINY_BERT = jm.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)


def _assert_exact(a, b):
  fa, fb = jp.tree.flatten(a), jp.tree.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


@pytest.mark.parametrize("name", ["llama_tiny", "llama_tiny_tied"])
def test_llama_roundtrip_exact_sharded(tmp_path, name):
  module, params, config = jm.from_hf(FIXTURES / name)
  jm.to_hf(params, config, tmp_path / "out", max_shard_bytes=50_000)
  assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
  with jp.io.open_checkpoint(FIXTURES / name) as a, jp.io.open_checkpoint(tmp_path / "out") as b:
    assert sorted(a.names()) == sorted(b.names())
    for n in a.names():
      np.testing.assert_array_equal(a.read(n), b.read(n), err_msg=n)
  module2, params2, config2 = jm.from_hf(tmp_path / "out")
  assert config2 == config
  _assert_exact(params, params2)


def test_bert_roundtrip_and_bert_prefix(tmp_path):
  params = jm.Bert(TINY_BERT).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  jm.to_hf(params, TINY_BERT, tmp_path / "a")
  _, params2, cfg2 = jm.from_hf(tmp_path / "a")
  assert cfg2 == TINY_BERT
  _assert_exact(params, params2)
  # BertFor* checkpoints prefix names with 'bert.'; extra heads need strict=False.
  flat = jp.io.load_safetensors(tmp_path / "a")
  flat = {"bert." + k: v for k, v in flat.items()}
  flat["cls.predictions.bias"] = np.zeros(40, np.float32)
  jp.io.save_safetensors(flat, tmp_path / "b", config=TINY_BERT.to_hf_dict())
  with pytest.raises(ValueError, match=r"cls\.predictions\.bias.*strict=False"):
    jm.from_hf(tmp_path / "b")
  _, params3, _ = jm.from_hf(tmp_path / "b", strict=False)
  _assert_exact(params, params3)


def test_bert_without_pooler_loads(tmp_path):
  cfg = jm.BertConfig(**{**TINY_BERT.__dict__, "add_pooling_layer": False})
  params = jm.Bert(cfg).init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
  assert "pooler" not in params
  jm.to_hf(params, cfg, tmp_path / "np")
  _, p2, cfg2 = jm.from_hf(tmp_path / "np")
  assert not cfg2.add_pooling_layer
  _assert_exact(params, p2)


@pytest.mark.parametrize("config", [
    jm.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, attention_bias=True),
    jm.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                   num_attention_heads=2, tie_word_embeddings=True, mlp_bias=True),
    TINY_BERT,
])
def test_hf_name_map_covers_every_param_once(config):
  module = jm.model_for_config(config)
  params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"]
  nmap = jm.hf_name_map(config)
  flat = jp.tree.flatten(params)
  assert set(nmap) == set(flat)
  assert len({hf for hf, _ in nmap.values()}) == len(nmap)
  for path, (hf, transpose) in nmap.items():
    assert transpose == (path.endswith("/kernel")), path  # only 2-D Linear kernels transpose
    if transpose:
      assert len(flat[path].shape) == 2


def _copy_fixture(tmp_path, name="llama_tiny"):
  dst = tmp_path / name
  shutil.copytree(FIXTURES / name, dst)
  return dst


def test_missing_tensor_is_named(tmp_path):
  flat = jp.io.load_safetensors(FIXTURES / "llama_tiny")
  del flat["model.layers.1.mlp.up_proj.weight"]
  cfg = json.loads((FIXTURES / "llama_tiny" / "config.json").read_text())
  jp.io.save_safetensors(flat, tmp_path / "m", config=cfg)
  with pytest.raises(ValueError, match=r"missing 1 tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
    jm.from_hf(tmp_path / "m")


def test_shape_mismatch_names_tensor_and_file(tmp_path):
  src = _copy_fixture(tmp_path)
  cfg = json.loads((src / "config.json").read_text())
  cfg["intermediate_size"] = 100
  (src / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError) as e:
    jm.from_hf(src)
  msg = str(e.value)
  assert "model.safetensors" in msg and str(src) in msg
  assert "mlp.down_proj.weight" in msg or "mlp.gate_proj.weight" in msg or "up_proj" in msg
  assert "(64, 128)" in msg or "(128, 64)" in msg


def test_unexpected_tensor_and_unknown_model_type(tmp_path):
  flat = jp.io.load_safetensors(FIXTURES / "llama_tiny")
  flat["model.layers.7.extra.weight"] = np.zeros(3, np.float32)
  flat["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(8, np.float32)  # ignored
  cfg = json.loads((FIXTURES / "llama_tiny" / "config.json").read_text())
  jp.io.save_safetensors(flat, tmp_path / "u", config=cfg)
  with pytest.raises(ValueError, match=r"model\.safetensors.*model\.layers\.7\.extra\.weight"):
    jm.from_hf(tmp_path / "u")
  jm.from_hf(tmp_path / "u", strict=False)
  cfg["model_type"] = "gpt2"
  jp.io.save_safetensors(flat, tmp_path / "g", config=cfg)
  with pytest.raises(ValueError,
                     match=r"'gpt2' is not supported; supported: \['bert', .*'llama', .*'qwen3'\]"):
    jm.from_hf(tmp_path / "g")


def test_no_config_json(tmp_path):
  jp.io.save_safetensors({"w": np.zeros(2, np.float32)}, tmp_path / "n")
  with pytest.raises(ValueError, match="no config.json"):
    jm.from_hf(tmp_path / "n")


def test_to_hf_refuses_non_array_kernel(tmp_path):
  _, params, config = jm.from_hf(FIXTURES / "llama_tiny")
  k = params["layers_0"]["mlp"]["up_proj"]["kernel"]
  params["layers_0"]["mlp"]["up_proj"]["kernel"] = {"codes": k, "scale": k[:1]}
  with pytest.raises(ValueError, match=r"layers_0/mlp/up_proj/kernel.*dequantize"):
    jm.to_hf(params, config, tmp_path / "q")
  assert not (tmp_path / "q").exists()


def test_from_hf_dtype_cast(tmp_path):
  _, params, _ = jm.from_hf(FIXTURES / "llama_tiny", dtype=jnp.bfloat16)
  assert {l.dtype for l in jp.tree.flatten(params).values()} == {jnp.dtype(jnp.bfloat16)}


def test_llama_config_hf_dict_roundtrip():
  legacy = {"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "rope_theta": 5e5,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "eos_token_id": [2, 3]}
  cfg = jm.LlamaConfig.from_hf_dict(legacy)
  assert cfg.rope_theta == 5e5 and cfg.rope_scaling_dict == {"rope_type": "linear", "factor": 2.0}
  assert cfg.num_key_value_heads == 2 and cfg.eos_token_id == (2, 3)
  d = cfg.to_hf_dict()
  assert d["rope_parameters"] == {"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}
  assert jm.LlamaConfig.from_hf_dict(d) == cfg
  hash(cfg)
