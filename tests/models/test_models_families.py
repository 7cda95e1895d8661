"""Every model family against HF transformers (fixtures made by
tests/fixtures/make_family_fixtures.py: a tiny random model per family, saved by transformers,
with transformers' fp32 logits on a batch with padding).

A family costs one ``FAMILIES`` entry in that script and one ``CASES`` entry here: the model type
it loads as, and config changes that must each move the logits (proof that the fixture
exercises the feature, and that our match with transformers depends on it).
"""

import dataclasses
import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.models as jm

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "families"


@dataclasses.dataclass(frozen=True)
class Case:
  model_type: str
  module: str
  ablations: tuple = ()   # config overrides, each of which must change the logits


CASES = {
    "qwen2_tiny": Case("qwen2", "Llama", ({"sliding_window": None}, {"qkv_bias": False})),
    "qwen3_tiny": Case("qwen3", "Llama", ({"qk_norm": False},)),
    "mistral_tiny": Case("mistral", "Llama", ({"sliding_window": None},)),
    "gemma2_tiny": Case("gemma2", "Gemma", (
        {"sliding_window": None}, {"attn_logit_softcapping": None},
        {"final_logit_softcapping": None}, {"query_pre_attn_scalar": 16})),
    "gemma3_tiny": Case("gemma3_text", "Gemma", (
        {"sliding_window": None}, {"rope_scaling": None}, {"rope_local_base_freq": 1e6})),
    "phi3_tiny": Case("phi3", "Llama", (
        {"sliding_window": None}, {"rope_scaling": None}, {"max_position_embeddings": 16})),
}


def test_every_fixture_has_a_case_and_every_family_a_fixture():
  assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == sorted(CASES)
  covered = {c.model_type for c in CASES.values()} | {"llama", "bert"}  # tests/models/*fixtures*
  assert covered == set(jm.model_types())


@pytest.fixture(scope="module", params=sorted(CASES))
def loaded(request):
  name = request.param
  module, params, config = jm.from_hf(FIXTURES / name)
  exp = np.load(FIXTURES / name / "expected.npz")
  return name, module, params, config, exp


def _logits(module, params, exp):
  return np.asarray(module.apply({"params": params}, jnp.asarray(exp["input_ids"]),
                                 jnp.asarray(exp["attention_mask"])))


def test_logits_match_transformers_and_dot_runs_every_linear(loaded):
  name, module, params, config, exp = loaded
  case = CASES[name]
  assert type(module).__name__ == case.module
  assert config.model_type == case.model_type
  assert exp["attention_mask"].min() == 0  # the batch has padding
  calls = []

  def dot(x, w):
    calls.append(w.shape)
    return x @ w

  got = np.asarray(type(module)(config, dot=dot).apply(
      {"params": params}, jnp.asarray(exp["input_ids"]), jnp.asarray(exp["attention_mask"])))
  diff = float(np.abs(got - exp["logits"]).max())
  assert diff <= 1e-4, f"{name}: max abs diff {diff}"
  assert len(calls) == sum(tr for _, tr in jm.hf_name_map(config).values())


def test_padding_content_is_ignored(loaded):
  name, module, params, config, exp = loaded
  ids, mask = exp["input_ids"].copy(), exp["attention_mask"]
  ids[mask == 0] = 7  # other padding tokens: no real position may notice
  got = _logits(module, params, dict(exp, input_ids=ids))
  np.testing.assert_allclose(got[mask == 1], exp["logits"][mask == 1], atol=1e-5)


@pytest.mark.slow
def test_each_feature_changes_the_logits(loaded):
  name, module, params, config, exp = loaded
  for override in CASES[name].ablations:
    cfg = dataclasses.replace(config, **override)
    got = _logits(type(module)(cfg), params, exp)
    diff = float(np.abs(got - exp["logits"]).max())
    assert diff > 1e-3, f"{name}: {override} leaves the logits unchanged ({diff})"


def test_to_hf_writes_the_same_tensors_and_config(loaded, tmp_path):
  name, module, params, config, exp = loaded
  src = FIXTURES / name
  jm.to_hf(params, config, tmp_path / "out", copy_from=src)
  want, got = jp.io.load_safetensors(src), jp.io.load_safetensors(tmp_path / "out")
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert (tmp_path / "out" / "tokenizer.json").is_file()
  _, _, config2 = jm.from_hf(tmp_path / "out")
  assert config2 == config
  written = json.loads((tmp_path / "out" / "config.json").read_text())
  assert written["model_type"] == CASES[name].model_type


def test_tokenizer_feeds_the_model(loaded):
  name, module, params, config, exp = loaded
  tok = jm.load_tokenizer(FIXTURES / name)
  tok.enable_padding(pad_id=tok.padding["pad_id"], pad_token=tok.padding["pad_token"], length=12)
  encs = tok.encode_batch(["the quick brown fox", "model parameters must not move at all"])
  ids = np.array([e.ids for e in encs])
  mask = np.array([e.attention_mask for e in encs])
  assert ids.shape == (2, 12) and mask[0].sum() < 12 and ids.max() < config.vocab_size
  assert tok.padding["pad_id"] == config.pad_token_id
  out = _logits(module, params, {"input_ids": ids, "attention_mask": mask})
  assert np.isfinite(out).all()


def test_longrope_short_factors_below_the_original_length():
  # HF switches longrope to the short factors when max(position) + 1 <= original max length.
  _, params, config = jm.from_hf(FIXTURES / "phi3_tiny")
  r = config.rope_scaling_dict
  kw = dict(head_dim=16, theta=config.rope_theta, scaling=r, partial_rotary_factor=0.75,
            max_position_embeddings=config.max_position_embeddings)
  short = jm.rope.rope_cos_sin(jnp.arange(8)[None], **kw)[0]
  long = jm.rope.rope_cos_sin(jnp.arange(9)[None], **kw)[0]
  inv_s, att = jm.rope.rope_inv_freq(16, config.rope_theta, r, partial_rotary_factor=0.75,
                                     max_position_embeddings=config.max_position_embeddings)
  assert att == pytest.approx(np.sqrt(1 + np.log(64 / 8) / np.log(8)))
  want = np.cos(np.concatenate([np.arange(8)[:, None] * inv_s] * 2, -1)) * att
  np.testing.assert_allclose(short[0], want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(long[0, :8], short[0])


def test_unsupported_rope_type_is_refused_by_name(tmp_path):
  src = tmp_path / "m"
  shutil.copytree(FIXTURES / "qwen2_tiny", src)
  cfg = json.loads((src / "config.json").read_text())
  cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}
  (src / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=r"config\.json.*'yarn' is not supported.*longrope"):
    jm.from_hf(src)


def _edited(tmp_path, name, edit):
  src = tmp_path / name
  shutil.copytree(FIXTURES / name, src)
  cfg = json.loads((src / "config.json").read_text())
  edit(cfg)
  (src / "config.json").write_text(json.dumps(cfg))
  return src


def test_qwen_sliding_layers_derived_as_transformers_does(tmp_path):
  # transformers: sliding_window counts only with use_sliding_window, and then layers
  # i >= max_window_layers slide (when config.json does not list layer_types).
  _, _, saved = jm.from_hf(FIXTURES / "qwen2_tiny")
  assert saved.layer_types == ("full_attention", "sliding_attention")
  _, _, derived = jm.from_hf(_edited(tmp_path, "qwen2_tiny", lambda c: c.pop("layer_types")))
  assert derived == saved
  off = jm.Qwen2Config.from_hf_dict({**saved.to_hf_dict(), "use_sliding_window": False})
  assert off.sliding_window is None and off.layer_type(1) == "full_attention"
  d = {k: v for k, v in saved.to_hf_dict().items() if k != "layer_types"}
  none = jm.Qwen3Config.from_hf_dict({**d, "max_window_layers": 5})
  assert [none.layer_type(i) for i in range(2)] == ["full_attention"] * 2


def test_gemma3_transformers4_config_layout(tmp_path):
  # Hub configs written by transformers 4: rope_theta / rope_local_base_freq / rope_scaling at
  # the top level and sliding_window_pattern instead of layer_types.
  _, _, cfg5 = jm.from_hf(FIXTURES / "gemma3_tiny")

  def to_v4(c):
    for k in ("rope_parameters", "layer_types"):
      c.pop(k)
    c.update(rope_theta=1e6, rope_local_base_freq=10000.0, sliding_window_pattern=6,
             rope_scaling={"rope_type": "linear", "factor": 8.0})
  _, _, cfg4 = jm.from_hf(_edited(tmp_path, "gemma3_tiny", to_v4))
  assert cfg4 == cfg5
  assert cfg5.layer_types.count("full_attention") == 1 and cfg5.layer_types[5] == "full_attention"
  assert cfg5.rope_for("sliding_attention") == (10000.0, None)
  assert cfg5.rope_for("full_attention") == (1e6, {"rope_type": "linear", "factor": 8.0})


def test_phi3_transformers4_su_rope_layout(tmp_path):
  _, _, cfg5 = jm.from_hf(FIXTURES / "phi3_tiny")

  def to_v4(c):
    rp = c.pop("rope_parameters")
    c.update(rope_theta=rp["rope_theta"], partial_rotary_factor=rp["partial_rotary_factor"],
             rope_scaling={"type": "su", "short_factor": rp["short_factor"],
                           "long_factor": rp["long_factor"]})
  module, params, cfg4 = jm.from_hf(_edited(tmp_path, "phi3_tiny", to_v4))
  exp = np.load(FIXTURES / "phi3_tiny" / "expected.npz")
  np.testing.assert_allclose(_logits(module, params, exp), exp["logits"], atol=1e-4)
  assert cfg4.partial_rotary_factor == cfg5.partial_rotary_factor == 0.75


def test_registry_names_every_family():
  assert jm.families() == ("BERT", "Gemma 2", "Gemma 3", "Llama", "Mistral", "Phi-3",
                           "Qwen2 / Qwen2.5", "Qwen3")
  for t in jm.model_types():
    f = jm.family(t)
    assert f.model_type == t and f.config_cls.__name__.endswith("Config")
  with pytest.raises(ValueError, match=r"'gpt2' is not supported; supported: \['bert'"):
    jm.family("gpt2")


def test_phi3_split_projections_same_logits_and_fused_on_write(tmp_path):
  module, params, config = jm.from_hf(FIXTURES / "phi3_tiny")
  exp = np.load(FIXTURES / "phi3_tiny" / "expected.npz")
  sp, scfg = jm.phi3.split_projections(params, config)
  attn = sp["layers_0"]["attn"]
  assert attn["q_proj"]["kernel"].shape == (64, 64) and attn["k_proj"]["kernel"].shape == (64, 64)
  assert sp["layers_0"]["mlp"]["gate_proj"]["kernel"].shape == (64, 96)
  np.testing.assert_allclose(_logits(type(module)(scfg), sp, exp), exp["logits"], atol=1e-4)
  jm.to_hf(sp, scfg, tmp_path / "out")   # written fused, as HF Phi-3 stores it
  want = jp.io.load_safetensors(FIXTURES / "phi3_tiny")
  got = jp.io.load_safetensors(tmp_path / "out")
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert jm.from_hf(tmp_path / "out")[2] == config
