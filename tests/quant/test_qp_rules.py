"""quantize_tree: first-match rules, defaults kept in full precision, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.models  # noqa: F401  (registers jp.models)
from jaxparams.quant import rules as qrules
from jaxparams.quant.calibrate import LayerStats
from jaxparams.quant.gptq import GPTQConfig, gptq
from jaxparams.quant.nf4 import NF4Config, nf4
from jaxparams.quant.qarray import QArray
from jaxparams.quant.rtn import RTNConfig, rtn
from jaxparams.quant.stats import gptq_hessian


def _tree():
  k = jax.random.split(jax.random.key(0), 4)
  return {"embed": {"embedding": jax.random.normal(k[0], (16, 32))},
          "mlp": {"up": {"kernel": jax.random.normal(k[1], (32, 32)), "bias": jnp.zeros(32)},
                  "down": {"kernel": jax.random.normal(k[2], (32, 32))}},
          "attn": {"q": {"kernel": jax.random.normal(k[3], (32, 32))}},
          "norm": {"scale": jnp.ones(32)}}


def test_first_match_wins_and_values_equal_direct_calls():
  t = _tree()
  q, report = qrules.quantize_tree(t, [("mlp/**", ("rtn", {"bits": 3, "group_size": 16})),
                                       ("**/kernel", ("nf4", {"block_size": 16}))])
  want_rtn = rtn(t["mlp"]["up"]["kernel"], RTNConfig(bits=3, group_size=16))
  want_nf4 = nf4(t["attn"]["q"]["kernel"], NF4Config(block_size=16))
  chex_equal = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  chex_equal(q["mlp"]["up"]["kernel"].codes, want_rtn.codes)
  chex_equal(q["mlp"]["up"]["kernel"].scale, want_rtn.scale)
  chex_equal(q["attn"]["q"]["kernel"].codes, want_nf4.codes)
  assert q["mlp"]["down"]["kernel"].bits == 3
  e = report.entries
  assert (e["mlp/up/kernel"].method, e["mlp/up/kernel"].reason) == ("rtn", "rule 0")
  assert (e["attn/q/kernel"].method, e["attn/q/kernel"].reason) == ("nf4", "rule 1")
  assert e["mlp/up/kernel"].group_size == 16 and e["attn/q/kernel"].bits == 4
  # Reported error is the relative Frobenius error of the dequantized weight.
  w = t["mlp"]["up"]["kernel"]
  ref = float(jnp.linalg.norm(want_rtn.dequantize() - w) / jnp.linalg.norm(w))
  assert e["mlp/up/kernel"].error == pytest.approx(ref, rel=1e-5)
  assert e["mlp/up/kernel"].bytes_after == want_rtn.nbytes
  # Bias, norm and embedding untouched (same objects).
  assert q["mlp"]["up"]["bias"] is t["mlp"]["up"]["bias"]
  assert e["embed/embedding"].reason == "default: embedding"
  assert e["norm/scale"].reason == "not a matrix"
  assert report.num_quantized == 3
  assert "rtn" in report.table()


def test_keep_spec_and_dict_rules():
  t = _tree()
  q, report = qrules.quantize_tree(t, [{"pattern": "attn/**", "method": "keep"},
                                       {"pattern": "**", "method": "rtn", "bits": 8, "group_size": -1}])
  assert not isinstance(q["attn"]["q"]["kernel"], QArray)
  assert report.entries["attn/q/kernel"].reason == "rule 0: keep"
  assert q["mlp"]["down"]["kernel"].bits == 8


def test_rule_matching_nothing_is_an_error():
  with pytest.raises(jp.tree.NoMatchError, match="mlp/gate"):
    qrules.quantize_tree(_tree(), [("**/kernel", "rtn"), ("mlp/gate/**", "nf4")])
  # A rule whose only matches are kept by default is an error too.
  with pytest.raises(ValueError, match="embed"):
    qrules.quantize_tree(_tree(), [("embed/**", "rtn")])
  # ... unless the defaults are lifted.
  q, _ = qrules.quantize_tree(_tree(), [("embed/**", ("rtn", {"group_size": 16}))], keep=())
  assert isinstance(q["embed"]["embedding"], QArray)
  # A rule shadowed by an earlier one claims nothing.
  with pytest.raises(ValueError, match="already claimed"):
    qrules.quantize_tree(_tree(), [("**", ("rtn", {"group_size": 16})), ("mlp/**", "nf4")])


def test_defaults_keep_embeddings_norms_biases_lm_head_on_llama():
  cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=32,
                              num_hidden_layers=1, num_attention_heads=2, attention_bias=True)
  params = jp.models.Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  q, report = qrules.quantize_tree(params, ("rtn", {"bits": 4, "group_size": 16}))
  flat = jp.tree.flatten(q, is_leaf=lambda x: isinstance(x, QArray))
  quantized = sorted(p for p, v in flat.items() if isinstance(v, QArray))
  assert quantized == sorted(f"layers_0/{m}/kernel" for m in (
      "attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/o_proj", "mlp/gate_proj",
      "mlp/up_proj", "mlp/down_proj"))
  assert report.entries["lm_head/kernel"].reason.startswith("default: lm head")
  assert report.entries["embed_tokens/embedding"].reason == "default: embedding"
  assert report.entries["layers_0/attn/q_proj/bias"].method == "keep"
  assert report.bytes_after < report.bytes_before


def test_bad_specs_and_calibration():
  t = _tree()
  with pytest.raises(ValueError, match="unknown method 'rtm'; valid: .*rtn"):
    qrules.quantize_tree(t, [("**/kernel", "rtm")])
  with pytest.raises(ValueError, match="bitz"):
    qrules.quantize_tree(t, [("**/kernel", ("rtn", {"bitz": 3}))])
  with pytest.raises(ValueError, match="needs calibration.*attn/q/kernel"):
    qrules.quantize_tree(t, [("attn/**", "gptq")])
  x_bad = jnp.ones((10, 16))
  with pytest.raises(ValueError, match="attn/q/kernel.*K=16.*K=32"):
    qrules.quantize_tree(t, [("attn/**", "gptq")], calibration={"attn/q/kernel": x_bad})
  with pytest.raises(ValueError, match="not in the tree"):
    qrules.quantize_tree(t, [("attn/**", "gptq")], calibration={"nope": jnp.ones((4, 32))})
  with pytest.raises(ValueError, match="must be"):
    LayerStats.from_inputs(jnp.ones(32), name="attn/q/kernel")
  t_nan = jax.tree.map(lambda a: a, t)
  t_nan["mlp"]["up"]["kernel"] = t_nan["mlp"]["up"]["kernel"].at[0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="mlp/up/kernel"):
    qrules.quantize_tree(t_nan, [("**/kernel", ("rtn", {"group_size": 16}))])


def test_calibrated_method_gets_the_same_hessian_as_a_direct_call():
  t = _tree()
  x = jax.random.normal(jax.random.key(5), (4, 40, 32))
  q, report = qrules.quantize_tree(
      t, [("attn/**", ("gptq", {"bits": 4, "group_size": 16}))], calibration={"attn/q/kernel": x})
  want = gptq(t["attn"]["q"]["kernel"], gptq_hessian(x), GPTQConfig(bits=4, group_size=16))
  np.testing.assert_array_equal(np.asarray(q["attn"]["q"]["kernel"].codes),
                                np.asarray(want.codes))
  np.testing.assert_allclose(np.asarray(q["attn"]["q"]["kernel"].scale), np.asarray(want.scale),
                             rtol=1e-6)
  assert report.entries["attn/q/kernel"].output_error < report.entries["attn/q/kernel"].error * 2
