"""``jaxparams quantize`` (RTN; GPTQ with calibration text) and ``jaxparams dequantize`` on every
model family: the CLI reaches the families through ``from_hf``/``hf_name_map`` only, so these prove
the registry gives it what it needs. (The fixture script checks that transformers reloads the
dequantized folders with the logits jaxparams computes for them.)"""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.models as jm
from jaxparams.cli.main import main as cli_main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "families"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
CALIBRATION = ["the quick brown fox jumps over the lazy dog",
               "model parameters must not move when saved and loaded again",
               "a small model is saved loaded changed and saved again"] * 4


def _quantize_dequantize(name, tmp_path, method):
  src = FIXTURES / name
  extra = []
  if method == "gptq":
    (tmp_path / "calib.txt").write_text("\n".join(CALIBRATION))
    extra = ["--calibration", str(tmp_path / "calib.txt"), "--max-length", "16"]
  q, dq = tmp_path / "q", tmp_path / "dq"
  assert cli_main(["quantize", str(src), str(q), "--method", method, "--group-size", "32",
                   "--no-progress", *extra]) == 0
  assert cli_main(["dequantize", str(q), str(dq)]) == 0
  return src, q, dq


def _check(name, src, q, dq):
  module, params, config = jm.from_hf(src)
  module2, params2, config2 = jm.from_hf(dq)
  assert config2 == config
  want, got = jp.io.load_safetensors(src), jp.io.load_safetensors(dq)
  assert sorted(got) == sorted(want)
  # Every Linear but the LM head (kept in full precision by default).
  linears = {hf for hf, tr in jm.hf_name_map(config).values() if tr} - {"lm_head.weight"}
  report = json.loads((q / "quant_report.json").read_text())
  assert report and (q / "tokenizer.json").is_file()
  for k in want:
    if k in linears:   # 4-bit grid: changed, but close
      err = np.linalg.norm(got[k] - want[k]) / np.linalg.norm(want[k])
      assert 1e-4 < err < 0.25, (k, err)
    else:              # norms, embeddings, biases: untouched
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  exp = np.load(src / "expected.npz")
  ids, mask = jnp.asarray(exp["input_ids"]), jnp.asarray(exp["attention_mask"])
  out = np.asarray(module2.apply({"params": params2}, ids, mask))
  scale = np.abs(exp["logits"]).max()
  assert 0 < np.abs(out - exp["logits"]).max() < 0.5 * scale


def _params(default):
  """Every family; those not in ``default`` only in the slow run (test time budget)."""
  return [pytest.param(n, marks=[] if n in default else [pytest.mark.slow]) for n in NAMES]


@pytest.mark.parametrize("name", _params({"qwen2_tiny", "phi3_tiny", "gemma3_tiny"}))
def test_rtn_quantize_dequantize_every_family(name, tmp_path):
  _check(name, *_quantize_dequantize(name, tmp_path, "rtn"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["phi3_tiny", "gemma2_tiny"])
def test_gptq_quantize_dequantize(name, tmp_path):
  """GPTQ calibrates through the model's forward: the fused Llama switch and the Gemma module."""
  _check(name, *_quantize_dequantize(name, tmp_path, "gptq"))
