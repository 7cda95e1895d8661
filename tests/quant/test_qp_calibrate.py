"""Calibration capture (flax interception) and sequential layer-by-layer quantization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.models  # noqa: F401
from jaxparams.quant import calibrate
from jaxparams.quant import rules as qrules
from jaxparams.quant.qarray import QArray


def _llama(layers=2):
  cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=32,
                              num_hidden_layers=layers, num_attention_heads=2, rms_norm_eps=1e-5)
  model = jp.models.Llama(cfg)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  # Outlier input channels make the Hessian informative (as in real LLMs).
  params = jax.tree.map(lambda a: a * 3.0 if a.ndim == 2 else a, params)
  return cfg, model, params


def _batch(seed=1, b=4, t=12, pad=3):
  ids = jax.random.randint(jax.random.key(seed), (b, t), 0, 32)
  mask = np.ones((b, t), np.int32)
  mask[0, t - pad:] = 0
  return {"input_ids": ids, "attention_mask": jnp.asarray(mask)}


def test_capture_shapes_and_values():
  cfg, model, params = _llama(1)
  batch = _batch()
  xs = calibrate.capture_inputs(model, params, **batch)
  n = int(batch["attention_mask"].sum())
  assert list(xs) == ["layers_0/attn/q_proj/kernel", "layers_0/attn/k_proj/kernel",
                      "layers_0/attn/v_proj/kernel", "layers_0/attn/o_proj/kernel",
                      "layers_0/mlp/gate_proj/kernel", "layers_0/mlp/up_proj/kernel",
                      "layers_0/mlp/down_proj/kernel", "lm_head/kernel"]
  for path, x in xs.items():
    assert x.shape == (n, 32), path
  # The q_proj input is RMSNorm(embedding[ids]) of the real tokens (independent recomputation).
  e = params["embed_tokens"]["embedding"][batch["input_ids"]]
  h = e / jnp.sqrt(jnp.mean(e * e, -1, keepdims=True) + cfg.rms_norm_eps)
  h = h * params["layers_0"]["input_layernorm"]["scale"]
  want = h[np.asarray(batch["attention_mask"], bool)]
  np.testing.assert_allclose(np.asarray(xs["layers_0/attn/q_proj/kernel"]), np.asarray(want),
                             rtol=1e-5, atol=1e-5)
  # Jitted statistics == statistics of the captured rows; padding rows excluded.
  stats = calibrate.collect_stats(model, params, [batch, batch])
  x = xs["layers_0/mlp/down_proj/kernel"]
  s = stats["layers_0/mlp/down_proj/kernel"]
  assert s.n == 2 * n
  np.testing.assert_allclose(np.asarray(s.hessian_matrix()), np.asarray(x.T @ x / n),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(s.mean_abs()), np.asarray(jnp.abs(x).mean(0)),
                             rtol=1e-5)
  # Only the wanted layers are returned.
  part = calibrate.capture_inputs(model, params, paths=["layers_0/attn/q_proj/kernel"], **batch)
  assert list(part) == ["layers_0/attn/q_proj/kernel"]


def _logits(model, params, batch):
  dense = jax.tree.map(lambda x: qrules.effective_weight(x) if isinstance(x, QArray) else x,
                       params, is_leaf=lambda x: isinstance(x, QArray))
  return jax.jit(model.apply)({"params": dense}, batch["input_ids"])


def test_sequential_gptq_beats_rtn_and_uses_quantized_prefix(monkeypatch):
  cfg, model, params = _llama(2)
  batches = [_batch(seed=s, b=8, t=16, pad=0) for s in range(2)]
  test = _batch(seed=9, b=8, t=16, pad=0)
  ref = _logits(model, params, test)
  spec = {"bits": 3, "group_size": 16}
  seen = {}
  real = qrules.quantize_leaf

  def spy(w, method, config, *, stats=None, name=""):
    seen[name] = stats
    return real(w, method, config, stats=stats, name=name)

  monkeypatch.setattr(qrules, "quantize_leaf", spy)
  q_gptq, rep = calibrate.quantize_model(model, params, [("**", ("gptq", spec))], batches)
  monkeypatch.setattr(qrules, "quantize_leaf", real)
  q_rtn, _ = qrules.quantize_tree(params, [("**", ("rtn", spec))])
  err = lambda q: float(jnp.linalg.norm(_logits(model, q, test) - ref) / jnp.linalg.norm(ref))
  e_gptq, e_rtn = err(q_gptq), err(q_rtn)
  assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)
  assert rep.num_quantized == 14
  # Block 1 was calibrated on the outputs of the already quantized block 0.
  prefix = dict(jp.tree.flatten(params))
  for p, v in jp.tree.flatten(q_gptq, is_leaf=lambda x: isinstance(x, QArray)).items():
    if p.startswith("layers_0/") and isinstance(v, QArray):
      prefix[p] = v.dequantize()
  runner = calibrate._stats_runner(model, ["layers_1/attn/q_proj/kernel"])
  want = calibrate.collect_stats(model, jp.tree.unflatten(prefix, like=params), batches,
                                 runner=runner)
  got = seen["layers_1/attn/q_proj/kernel"]
  np.testing.assert_allclose(np.asarray(got.hessian_matrix()),
                             np.asarray(want["layers_1/attn/q_proj/kernel"].hessian_matrix()),
                             rtol=1e-4, atol=1e-5)
  fp = calibrate.collect_stats(model, params, batches, runner=runner)
  assert not np.allclose(np.asarray(got.hessian_matrix()),
                         np.asarray(fp["layers_1/attn/q_proj/kernel"].hessian_matrix()),
                         rtol=1e-4, atol=1e-5)


def test_bad_calibration_inputs():
  _, model, params = _llama(1)
  rules = [("**", ("gptq", {"bits": 4, "group_size": 16}))]
  with pytest.raises(ValueError, match="needs calibration batches"):
    calibrate.quantize_model(model, params, rules, None)
  with pytest.raises(ValueError, match="input_ids must be int"):
    calibrate.quantize_model(model, params, rules, [{"input_ids": jnp.ones((2, 4))}])
  with pytest.raises(ValueError, match="attention_mask shape"):
    calibrate.quantize_model(model, params, rules, [{"input_ids": jnp.ones((2, 4), jnp.int32),
                                                     "attention_mask": jnp.ones((2, 5))}])
  with pytest.raises(ValueError, match="no batches"):
    calibrate.quantize_model(model, params, rules, [])
