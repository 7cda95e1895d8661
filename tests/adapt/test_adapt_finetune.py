"""LoRA fine-tuning from configs/lora_llama.py through the trainer; the PEFT adapter it writes."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.adapt import finetune
from jaxparams.train.lora import train_lora

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures"


def _config(arg="runlocal,steps=12"):
  spec = importlib.util.spec_from_file_location("lora_cfg", REPO / "configs" / "lora_llama.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  cfg = _config()
  cfg.plot = False
  work = tmp_path_factory.mktemp("lora_run")
  return cfg, work, train_lora(cfg, work)


def test_only_the_adapter_trains_and_loss_drops(run):
  cfg, work, result = run
  flat = jp.tree.flatten(result.params)
  assert flat and all(p.startswith("adapter/") and p.rsplit("/", 1)[-1] in ("a", "b")
                      for p in flat)
  n = sum(int(np.prod(x.shape)) for x in flat.values())
  losses = [r["loss"] for r in result.records if r["event"] == "train"]
  assert all(r["n_params"] == n for r in result.records if r["event"] == "train")
  assert n == 2 * 4 * (4 * 64 + 2 * 32 + 2 * 64 + 3 * (64 + 128))  # r=4 on q,k,v,o,gate,up,down
  assert min(losses[-4:]) < losses[0] - 0.2


def test_saved_peft_adapter_reproduces_the_trained_model(run):
  cfg, work, result = run
  module, params, config = jp.models.from_hf(FIX / "llama_tiny")
  adapter, over = jp.adapt.load_peft(work / "adapter", config)
  assert not over
  ids = jnp.arange(20)[None] * 7 % 256
  mc = finetune.LoraFinetuneConfig(**{k: v for k, v in cfg.model.to_dict().items()
                                      if k != "name"})
  trained = finetune.LoraLM(mc).apply({"params": result.params}, ids)
  merged = module.apply({"params": jp.adapt.merge(params, adapter)}, ids)
  np.testing.assert_allclose(merged, trained, atol=2e-5)
  base = module.apply({"params": params}, ids)
  assert float(jnp.abs(base - trained).max()) > 1e-3  # the adapter changed the model


@pytest.mark.slow
def test_resume_is_exact(run, tmp_path):
  cfg, _, result = run
  cfg = _config()
  cfg.plot = False
  cfg.stop_at_step = 6
  half = train_lora(cfg, tmp_path)
  assert half.step == 6 and not (tmp_path / "adapter").exists()
  cfg.stop_at_step = 0
  resumed = train_lora(cfg, tmp_path)
  assert resumed.step == 12 and (tmp_path / "adapter" / "adapter_config.json").is_file()
  assert jp.tree.allclose(jax.device_get(resumed.params), jax.device_get(result.params), rtol=0)


# PEFT loading this adapter is checked against PEFT itself by benchmarks/peer_checks.py
# (peft_finetuned_adapter), in the peer environment benchmarks/peer_env.sh builds.


@pytest.mark.slow
def test_dora_finetune_writes_a_dora_adapter(tmp_path):
  cfg = _config("runlocal,dora=1,steps=3")
  cfg.plot = False
  result = train_lora(cfg, tmp_path)
  leaves = {p.rsplit("/", 1)[-1] for p in jp.tree.flatten(result.params)}
  assert leaves == {"a", "b", "magnitude"}
  ad = jp.adapt.read_peft(tmp_path / "adapter")
  assert ad.config["use_dora"] and all("magnitude" in m for m in ad.modules.values())
  module, params, config = jp.models.from_hf(FIX / "llama_tiny")
  adapter, _ = jp.adapt.load_peft(tmp_path / "adapter", config)
  ids = jnp.arange(12)[None] * 11 % 256
  mc = finetune.LoraFinetuneConfig(**{k: v for k, v in cfg.model.to_dict().items()
                                      if k != "name"})
  trained = finetune.LoraLM(mc).apply({"params": result.params}, ids)
  merged = module.apply({"params": jp.adapt.merge(params, adapter)}, ids)
  np.testing.assert_allclose(merged, trained, atol=2e-5)
