"""ReLU FFN option, relufication, sparsity and predictors against direct computations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams import flash
from jaxparams.models import Llama, LlamaConfig

CFG = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=2)


def _params(cfg):
  ids = jnp.ones((1, 4), jnp.int32)
  return Llama(cfg).init(jax.random.key(0), ids)["params"]


def test_relu_option_is_relu_gate_times_up_and_default_unchanged():
  params = _params(CFG)
  ids = jax.random.randint(jax.random.key(1), (2, 7), 0, 32)
  relu = flash.relufy(CFG)
  assert relu.hidden_act == "relu" and CFG.hidden_act == "silu"
  assert relu.to_hf_dict()["hidden_act"] == "relu"
  x = jax.random.normal(jax.random.key(2), (3, 16))
  mlp = params["layers_0"]["mlp"]
  from jaxparams.models.llama import LlamaMLP  # pylint: disable=import-outside-toplevel
  want = (jax.nn.relu(x @ mlp["gate_proj"]["kernel"]) * (x @ mlp["up_proj"]["kernel"])
          ) @ mlp["down_proj"]["kernel"]
  got = LlamaMLP(relu).apply({"params": mlp}, x)
  np.testing.assert_allclose(got, want, atol=1e-6)
  silu = (jax.nn.silu(x @ mlp["gate_proj"]["kernel"]) * (x @ mlp["up_proj"]["kernel"])
          ) @ mlp["down_proj"]["kernel"]
  np.testing.assert_allclose(LlamaMLP(CFG).apply({"params": mlp}, x), silu, atol=1e-6)
  assert not np.allclose(Llama(relu).apply({"params": params}, ids),
                         Llama(CFG).apply({"params": params}, ids))
  with pytest.raises(ValueError, match="supported"):
    dataclasses.replace(CFG, hidden_act="gelu")


def test_sparsity_counts_inactive_gates():
  cfg = flash.relufy(CFG)
  params = _params(cfg)
  ids = jax.random.randint(jax.random.key(3), (2, 9), 0, 32)
  xs = flash.ffn_inputs(Llama(cfg), params, ids)
  assert [x.shape for x in xs] == [(18, 16), (18, 16)]
  # independent: the module's own gate pre-activation
  pre = xs[1] @ np.asarray(params["layers_1"]["mlp"]["gate_proj"]["kernel"])
  sp = flash.ffn_sparsity(Llama(cfg), params, [ids])
  assert sp[1] == pytest.approx(float((pre <= 0).mean()))


def test_finetune_lowers_the_loss():
  cfg = flash.relufy(CFG)
  params = _params(cfg)
  data = np.tile(np.arange(8, dtype=np.int32), (4, 2))
  before = float(flash.lm_loss(Llama(cfg), params, jnp.asarray(data)))
  params, _ = flash.finetune(Llama(cfg), params, [data], steps=30, learning_rate=1e-2)
  assert float(flash.lm_loss(Llama(cfg), params, jnp.asarray(data))) < before - 1.0


def test_predictors_recall_and_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((400, 8)).astype(np.float32)
  w = rng.standard_normal((8, 24)).astype(np.float32)
  act = x @ w > 0.5
  preds = flash.train_predictors([x, x], [act, act], rank=8, steps=300, recall=0.99)
  m = flash.predictor_metrics(preds, [x], [act])[0]
  assert m["recall"] >= 0.98 and m["precision"] > 0.5
  flash.save_predictors(preds, tmp_path / "p")
  back = flash.load_predictors(tmp_path / "p")
  assert len(back) == 2 and back[1].threshold == pytest.approx(preds[1].threshold)
  np.testing.assert_array_equal(back[0].b, preds[0].b)
  from jaxparams.demo.tiny_llama import write_llama  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="not a predictor checkpoint"):
    flash.load_predictors(write_llama(tmp_path / "m"))


def test_predicted_loss_keep_all_is_dense():
  cfg = flash.relufy(CFG)
  params = _params(cfg)
  ids = jax.random.randint(jax.random.key(4), (2, 9), 0, 32)
  keep = [flash.LayerPredictor(np.zeros((16, 1), np.float32), np.zeros((1, 48), np.float32),
                               np.ones(48, np.float32), 0.0)] * 2
  assert float(flash.predicted_loss(Llama(cfg), params, keep, ids)) == pytest.approx(
      float(flash.lm_loss(Llama(cfg), params, ids)), abs=1e-6)
