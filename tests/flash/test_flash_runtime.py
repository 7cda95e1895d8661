"""The runtime: dense = the Llama module, oracle = dense (1e-5), reads and budget as claimed."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams import flash
from jaxparams.demo.tiny_llama import llama_config, write_llama
from jaxparams.models import from_hf

PROMPT = [1, 5, 9]
# Peak RSS <= RSS after start-up and compilation (python, jax, compiled programs) + the
# budget + this constant: the KV cache, the host copies made while reading the resident
# weights, thread stacks and allocator slack.
RSS_CONSTANT = 32 * 2 ** 20


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory):
  d = tmp_path_factory.mktemp("flash")
  cfg = dict(llama_config(hidden_size=32, intermediate_size=256, num_hidden_layers=4),
             hidden_act="relu")
  return write_llama(d / "m", cfg=cfg)


@pytest.fixture(scope="module")
def dense(relu_model):
  with flash.FlashModel(relu_model, flash.FlashConfig(memory_budget=1.0, naive=True)) as m:
    return m.generate(PROMPT, 5, keep_logits=True)


def test_dense_runtime_is_the_llama_module(relu_model, dense):
  module, params, _ = from_hf(relu_model)
  ids = jnp.asarray([PROMPT + dense["tokens"][:-1]])
  ref = np.asarray(module.apply({"params": params}, ids)[0, len(PROMPT) - 1:])
  np.testing.assert_allclose(np.stack(dense["logits"]), ref, atol=1e-5, rtol=0)
  assert dense["tokens"] == ref.argmax(-1).tolist()
  assert dense["bytes_read_per_token"] == 0  # budget 1.0: read once, in the prompt


@pytest.mark.parametrize("window,bundled", [(0, True), (3, True), (3, False)])
def test_oracle_equals_dense(relu_model, dense, window, bundled):
  cfg = flash.FlashConfig(memory_budget=0.9, oracle=True, window=window)
  with flash.FlashModel(relu_model, cfg, bundled=bundled) as m:
    o = m.generate(PROMPT, 5, keep_logits=True)
  assert o["dropped_neurons_per_token"] == 0
  assert o["tokens"] == dense["tokens"]
  np.testing.assert_allclose(np.stack(o["logits"]), np.stack(dense["logits"]), atol=1e-5, rtol=0)
  # Only the neurons that are active (plus the window's) are read: ~half of random weights.
  assert 0 < o["bytes_read_per_token"] < o["ffn_bytes"]
  frac = np.mean(o["active_fraction_per_layer"])
  assert 0.3 < frac < 0.7


@pytest.mark.parametrize("bundled", [True, False])
@pytest.mark.parametrize("max_chunk", [1, 1 << 22])
def test_oracle_equals_dense_with_cut_reads(relu_model, dense, bundled, max_chunk, monkeypatch):
  """Reads cut at every row (max_chunk_bytes) and at 2 buffers per call (IOV_MAX) still land
  each neuron in its row, new neurons taking the rows of the ones the window let go."""
  monkeypatch.setattr(flash.runtime, "_IOV_MAX", 2)
  cfg = flash.FlashConfig(memory_budget=0.9, oracle=True, window=2, max_chunk_bytes=max_chunk)
  with flash.FlashModel(relu_model, cfg, bundled=bundled) as m:
    o = m.generate(PROMPT, 5, keep_logits=True)
    assert m.matrices[0].n < 256  # the window let neurons go
  assert o["tokens"] == dense["tokens"]
  np.testing.assert_allclose(np.stack(o["logits"]), np.stack(dense["logits"]), atol=1e-5, rtol=0)
  if max_chunk == 1:  # one call per neuron (bundled) or per neuron and part (split)
    assert o["avg_chunk_bytes"] == (3 * 32 * 4 if bundled else 32 * 4)
  else:  # at most 2 rows per call
    assert 32 * 4 * (3 if bundled else 1) < o["avg_chunk_bytes"] <= 2 * 3 * 32 * 4


def test_bundling_cuts_read_calls_not_bytes(relu_model):
  reports = {}
  for b in (True, False):
    with flash.FlashModel(relu_model, flash.FlashConfig(memory_budget=0.9, oracle=True,
                                                        window=0), bundled=b) as m:
      reports[b] = m.generate(PROMPT, 4)
  assert reports[True]["bytes_read_per_token"] == reports[False]["bytes_read_per_token"]
  # split: one call per run and part (3 parts); bundled: one per run.
  assert reports[False]["read_calls_per_token"] == pytest.approx(
      3 * reports[True]["read_calls_per_token"])


def test_naive_reads_every_ffn_byte_per_token(relu_model, dense):
  with flash.FlashModel(relu_model, flash.FlashConfig(memory_budget=0.5, naive=True)) as m:
    r = m.generate(PROMPT, 5)
  assert r["tokens"] == dense["tokens"]
  assert r["bytes_read_per_token"] == r["ffn_bytes"]


def test_learned_predictor_reads_fewer_neurons(relu_model):
  rng = np.random.default_rng(0)
  preds = [flash.LayerPredictor(rng.standard_normal((32, 4)).astype(np.float32),
                                rng.standard_normal((4, 256)).astype(np.float32),
                                np.zeros(256, np.float32), 1.0) for _ in range(4)]
  with flash.FlashModel(relu_model, flash.FlashConfig(memory_budget=0.5, window=0),
                        predictors=preds) as m:
    r = m.generate(PROMPT, 3)
  assert 0 < np.mean(r["loaded_fraction_per_layer"]) < 0.5


def test_budget_too_small_is_refused(relu_model):
  with pytest.raises(ValueError, match="memory budget"):
    flash.FlashModel(relu_model, flash.FlashConfig(memory_budget=0.05, oracle=True))


def _cli(model, report, *extra):
  cmd = [sys.executable, "-m", "jaxparams.cli.main", "flash", "run", str(model),
         "--prompt-ids", "1,5,9", "--new-tokens", "4", "--report", str(report), *extra]
  subprocess.run(cmd, check=True, capture_output=True)
  return json.loads(report.read_text())


def test_cli_run_report_and_peak_rss_within_budget(tmp_path):
  # A model big enough for the budget to show in RSS: 4 layers x 4096 neurons x 3 x 128 fp32
  # = 25 MB of FFN; budget 0.5 -> 13 MB.
  cfg = dict(llama_config(hidden_size=128, intermediate_size=4096, num_hidden_layers=4,
                          num_attention_heads=4), hidden_act="relu")
  src = write_llama(tmp_path / "m", cfg=cfg)
  rng = np.random.default_rng(0)  # a predictor that marks every neuron active: the worst case
  flash.save_predictors([flash.LayerPredictor(
      rng.standard_normal((128, 4)).astype(np.float32), np.zeros((4, 4096), np.float32),
      np.ones(4096, np.float32), 0.0) for _ in range(4)], tmp_path / "p")
  r = _cli(src, tmp_path / "o.json", "--memory-budget", "0.5", "--predictors",
           str(tmp_path / "p"), "--window", "3")
  for k in ("tokens", "tokens_per_s", "bytes_read_per_token", "ffn_bytes",
            "read_calls_per_token", "peak_rss_bytes"):
    assert k in r
  assert len(r["tokens"]) == 4
  assert r["dropped_neurons_per_token"] > 0  # the budget binds
  assert r["peak_rss_bytes"] <= r["base_rss_bytes"] + r["budget_bytes"] + RSS_CONSTANT
  d = _cli(src, tmp_path / "d.json", "--memory-budget", "1.0", "--naive")
  n = _cli(src, tmp_path / "n.json", "--memory-budget", "0.5", "--naive")
  assert n["peak_rss_bytes"] <= n["base_rss_bytes"] + n["budget_bytes"] + RSS_CONSTANT
  assert n["tokens"] == d["tokens"]
  assert n["bytes_read_per_token"] == n["ffn_bytes"]
