"""The adapters demo step: LoRA on mirrored digits, merged and extracted back."""

from jaxparams.demo import adapters


def test_demo_step_lora_fixes_the_shift_and_survives_merge_and_extraction():
  out = adapters.setup(base_steps=200, lora_steps=200)
  acc = out["accuracy"]
  assert acc["base"]["original"] > 0.9 and acc["base"]["mirrored"] < 0.6
  assert acc["lora (unmerged)"]["mirrored"] > 0.9
  # merged and re-merged extraction predict what the unmerged adapter predicts
  for name in ("merged", "extracted, re-merged"):
    assert abs(acc[name]["mirrored"] - acc["lora (unmerged)"]["mirrored"]) < 0.005
  assert out["extraction_tail"] < 1e-4 * out["delta_norm"]
  assert out["n_adapter"] == 4 * (64 + 64) + 4 * (64 + 10)
