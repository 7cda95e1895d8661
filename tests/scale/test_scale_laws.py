"""Step law and compound scaling against the papers' formulas and worked numbers."""

import dataclasses
import math

import ml_collections
import numpy as np
import pytest

from jaxparams.models.llama import LlamaConfig
from jaxparams.scale import compound, steplaw


@pytest.mark.parametrize("n,d,lr,batch", [
    (1e9, 1e11, 1.63e-3, 1.11e6),     # research notes' evaluation of the formula
    (7e9, 2e12, 1.02e-3, 6.1e6),
])
def test_step_law_worked_numbers(n, d, lr, batch):
  law = steplaw.step_law(n, d)
  assert law.learning_rate == pytest.approx(lr, rel=5e-3)
  assert law.batch_tokens == pytest.approx(batch, rel=1e-2)
  # The formula itself, written independently.
  assert law.learning_rate == pytest.approx(1.79 * math.exp(-0.713 * math.log(n) + 0.307 * math.log(d)))
  assert law.batch_tokens == pytest.approx(0.58 * math.exp(0.571 * math.log(d)))


def test_step_law_exponents_and_configs():
  # Doubling N lowers η by 2^-0.713; doubling D raises it by 2^0.307 and B by 2^0.571.
  assert steplaw.step_law_lr(2e9, 1e11) / steplaw.step_law_lr(1e9, 1e11) == pytest.approx(2 ** -0.713)
  assert steplaw.step_law_lr(1e9, 2e11) / steplaw.step_law_lr(1e9, 1e11) == pytest.approx(2 ** 0.307)
  assert steplaw.step_law_batch_tokens(2e11) / steplaw.step_law_batch_tokens(1e11) == \
      pytest.approx(2 ** 0.571)

  @dataclasses.dataclass(frozen=True, kw_only=True)
  class Train:
    learning_rate: float = 1.0
    batch_size: int = 1
    steps: int = 10

  cfg = steplaw.apply_step_law(Train(), n_params=1e9, n_tokens=1e11, seq_len=2048)
  assert cfg.learning_rate == pytest.approx(1.63e-3, rel=5e-3) and cfg.batch_size == 541
  cd = ml_collections.ConfigDict({"learning_rate": 1.0, "batch_size": 1})
  new = steplaw.apply_step_law(cd, n_params=1e9, n_tokens=1e11)
  assert new.batch_size == pytest.approx(1.108e6, rel=1e-2) and cd.batch_size == 1
  with pytest.raises(ValueError, match="no field"):
    steplaw.apply_step_law({"lr": 1.0, "batch_size": 2}, n_params=1e9, n_tokens=1e9)
  with pytest.raises(ValueError, match="n_params must be > 0"):
    steplaw.step_law(0, 1e9)
  params = {"embed_tokens": {"embedding": np.zeros((100, 8))}, "layers_0": {"k": np.zeros((8, 8))},
            "lm_head": {"kernel": np.zeros((8, 100))}}
  assert steplaw.non_embedding_params(params) == 64


def test_compound_exponents_and_ratios():
  assert compound.fast_exponents(0.8) == (0.1, 0.8, 0.1)
  assert compound.fast_exponents(1.0) == (0.0, 1.0, 0.0)          # width scaling
  e = compound.fast_exponents(1 / 3)
  assert e == pytest.approx((1 / 3, 1 / 3, 1 / 3))                 # uniform dwr
  for s in (2.0, 4.0, 16.0):
    r = compound.complexity_ratios(s, compound.fast_exponents(0.8))
    assert r["flops"] == pytest.approx(s)
    assert r["activations"] == pytest.approx(s ** 0.6)             # s^(1 − α/2), ~O(√s)
    assert r["params"] == pytest.approx(s ** 0.9)                  # s^((1+α)/2)
  with pytest.raises(ValueError, match="alpha"):
    compound.fast_exponents(1.5)


def test_compound_scale_worked_example():
  # d × 4^0.1 = 18.38 -> 18; w × 4^0.4 = 111.4 -> 112 (multiple of 8); r × 4^0.05 = 239.9 -> 240.
  assert compound.compound_scale(depth=16, width=64, resolution=224, s=4.0) == (18, 112, 240)
  assert compound.compound_scale(depth=16, width=64, s=4.0, alpha=1.0) == (16, 128, None)
  with pytest.raises(ValueError, match="sum to 1"):
    compound.compound_scale(depth=2, width=8, s=2.0, exponents=(0.5, 0.5, 0.5))


def test_scale_llama_flops():
  cfg = LlamaConfig(vocab_size=32, hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                    num_attention_heads=4, num_key_value_heads=2)
  big = compound.scale_llama(cfg, 8.0)
  assert big.head_dim_ == cfg.head_dim_
  assert big.num_attention_heads % big.num_key_value_heads == 0
  assert big.num_attention_heads // big.num_key_value_heads == 2
  flops = big.num_hidden_layers * big.hidden_size ** 2 / (cfg.num_hidden_layers * cfg.hidden_size ** 2)
  assert flops == pytest.approx(8.0, rel=0.25)
  assert big.intermediate_size / big.hidden_size == pytest.approx(688 / 256, rel=0.02)
