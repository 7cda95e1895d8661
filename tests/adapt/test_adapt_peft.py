"""LoRA / DoRA against PEFT fixtures (tests/fixtures/make_peft_fixture.py): forward, merge, I/O."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp

FIX = Path(__file__).resolve().parents[1] / "fixtures"
SPECS = {"llama_lora": "llama", "llama_rslora": "llama", "llama_dora": "llama",
         "bert_lora": "bert", "bert_dora": "bert", "bert_bias_all": "bert"}


@pytest.fixture(scope="module")
def outputs():
  return np.load(FIX / "peft_outputs.npz")


@pytest.fixture(scope="module")
def bases():
  return {"llama": jp.models.from_hf(FIX / "llama_tiny"),
          "bert": jp.models.from_hf(FIX / "peft_bert_tiny")}


@pytest.mark.parametrize("name", list(SPECS))
def test_forward_and_merge_match_peft(name, outputs, bases):
  module, params, config = bases[SPECS[name]]
  adapter, overrides = jp.adapt.load_peft(FIX / f"peft_{name}", config)
  params = jp.adapt.apply_overrides(params, overrides)  # bias='all': the trained biases
  ids, mask = jnp.asarray(outputs["input_ids"]), jnp.asarray(outputs["attention_mask"])
  ref = outputs[f"{name}/out"]
  unmerged_model = jp.models.model_for_config(config, dot=jp.adapt.dot)
  unmerged = unmerged_model.apply({"params": jp.adapt.inject(params, adapter)}, ids, mask)
  assert np.abs(np.asarray(unmerged) - ref).max() <= 1e-5
  merged_params = jp.adapt.merge(params, adapter)
  merged = module.apply({"params": merged_params}, ids, mask)
  assert np.abs(np.asarray(merged) - ref).max() <= 1e-5
  # merge == PEFT merge_and_unload, tensor by tensor (fp32, 1e-6)
  nmap = jp.models.hf_name_map(config)
  flat = jp.tree.flatten(merged_params)
  by_hf = {hf: (fp, t) for fp, (hf, t) in nmap.items()}
  prefix = f"{name}/merged/"
  keys = [k for k in outputs.files if k.startswith(prefix)]
  assert keys
  for k in keys:
    fp, t = by_hf[k[len(prefix):]]
    ours = np.asarray(flat[fp]).T if t else np.asarray(flat[fp])
    np.testing.assert_allclose(ours, outputs[k], rtol=1e-6, atol=1e-6, err_msg=k)
  if name == "llama_rslora":  # save_embedding_layers wrote the base tables: identical overrides
    assert set(overrides) == {"embed_tokens/embedding", "lm_head/kernel"}
    np.testing.assert_array_equal(overrides["lm_head/kernel"], np.asarray(params["lm_head"]["kernel"]))


def test_scaling_from_config_patterns():
  ad = jp.adapt.read_peft(FIX / "peft_llama_rslora")
  s = {m: e["scale"] for m, e in ad.modules.items()}
  # rsLoRA alpha / sqrt(r): default r 8 alpha 16; q_proj r 2; v_proj alpha 3; layer-1 down r 6
  assert s["model.layers.0.mlp.down_proj"] == \
      pytest.approx(16 / np.sqrt(8))
  assert s["model.layers.0.self_attn.q_proj"] == pytest.approx(16 / np.sqrt(2))
  assert s["model.layers.1.self_attn.v_proj"] == pytest.approx(3 / np.sqrt(8))
  assert s["model.layers.1.mlp.down_proj"] == pytest.approx(16 / np.sqrt(6))
  assert ad.modules["model.embed_tokens"]["embedding"] is True
  assert ad.modules["model.embed_tokens"]["A"].shape == (8, 256)


@pytest.mark.parametrize("name", ["llama_rslora", "bert_dora", "bert_lora", "bert_bias_all"])
def test_write_read_roundtrip_same_tensors(name, bases, tmp_path):
  _, params, config = bases[SPECS[name]]
  adapter, overrides = jp.adapt.load_peft(FIX / f"peft_{name}", config)
  bias = "all" if name == "bert_bias_all" else "none"
  written = jp.adapt.save_peft(adapter, config, tmp_path / "ad", overrides=overrides,
                               use_rslora=name == "llama_rslora", bias=bias)
  if bias == "all":  # PEFT's names: adapted modules' biases under base_layer
    with jp.io.open_checkpoint(tmp_path / "ad" / "adapter_model.safetensors") as r:
      assert "base_model.model.encoder.layer.0.attention.self.query.base_layer.bias" in r.names()
      assert "base_model.model.encoder.layer.0.attention.self.key.bias" in r.names()
    assert written.config["modules_to_save"] is None
  back, over2 = jp.adapt.load_peft(tmp_path / "ad", config)
  assert jp.tree.allclose(adapter, back, rtol=1e-7)
  assert set(over2) == set(overrides)
  cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
  assert cfg["use_dora"] == (name == "bert_dora") and cfg["lora_bias"] == (name == "bert_lora")


@pytest.mark.parametrize("name", ["llama_lora", "llama_dora"])
def test_merge_unmerge_roundtrip(name, bases):
  _, params, config = bases["llama"]
  adapter, _ = jp.adapt.load_peft(FIX / f"peft_{name}", config)
  norms = jp.adapt.dora_norms(params, adapter)
  assert bool(norms) == (name == "llama_dora")
  back = jp.adapt.unmerge(jp.adapt.merge(params, adapter), adapter, norms=norms)
  worst = max(float(jnp.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(back), jax.tree.leaves(params)))
  assert worst <= 1e-6
  if name == "llama_dora":
    with pytest.raises(ValueError, match="pre-merge norm"):
      jp.adapt.unmerge(params, adapter)


def _copy(tmp_path, name="llama_lora"):
  dst = tmp_path / name
  shutil.copytree(FIX / f"peft_{name}", dst)
  return dst


@pytest.mark.parametrize("field,value,match", [
    ("init_lora_weights", "pissa", "init_lora_weights"),
    ("bias", "some", "field .bias. must be one of"),
    ("use_qalora", True, "use_qalora"),
    ("layer_replication", [[0, 1]], "layer_replication"),
    ("brand_new_field", 1, "unknown adapter_config field"),
    ("peft_type", "IA3", "peft_type"),
    ("r", 5, "rank 5"),
])
def test_unsupported_config_fields_raise(tmp_path, field, value, match):
  dst = _copy(tmp_path)
  cfg = json.loads((dst / "adapter_config.json").read_text())
  cfg[field] = value
  (dst / "adapter_config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=match):
    jp.adapt.read_peft(dst)


def test_pickle_adapter_refused(tmp_path):
  dst = _copy(tmp_path)
  (dst / "adapter_model.safetensors").unlink()
  (dst / "adapter_model.bin").write_bytes(b"\x80\x04not really")
  with pytest.raises(ValueError, match="refusing pickle"):
    jp.adapt.read_peft(dst)
  with pytest.raises(FileNotFoundError):
    jp.adapt.read_peft(tmp_path / "nothing")


def test_init_matches_peft_init_rules(bases):
  _, params, config = bases["llama"]
  ad = jp.adapt.init(params, "**/attn/q_proj/kernel", rank=4, alpha=8, key=jax.random.key(0),
                     use_dora=True, rank_pattern={"layers_1/**": 2})
  e = jp.adapt.entries(ad)
  a0, a1 = e["layers_0/attn/q_proj/kernel"], e["layers_1/attn/q_proj/kernel"]
  assert a0["a"].shape == (64, 4) and a1["a"].shape == (64, 2)
  assert float(a0["scale"]) == 2.0 and float(a1["scale"]) == 4.0
  assert float(jnp.abs(a0["b"]).max()) == 0.0          # B = 0: the adapter starts as a no-op
  assert float(jnp.abs(a0["a"]).max()) <= 1 / 8        # kaiming_uniform(a=sqrt(5)): 1/sqrt(in)
  w = params["layers_0"]["attn"]["q_proj"]["kernel"]
  np.testing.assert_allclose(a0["magnitude"], jnp.linalg.norm(w, axis=0), rtol=1e-6)
  # DoRA with B = 0 leaves the model unchanged
  np.testing.assert_allclose(jp.adapt.merge(params, ad)["layers_0"]["attn"]["q_proj"]["kernel"], w,
                             rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="matches nothing|No leaf|match"):
    jp.adapt.init(params, "**/nope/kernel", rank=4, alpha=8, key=jax.random.key(0))
