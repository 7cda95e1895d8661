"""LoRA fine-tuning from configs/lora_llama.py through the trainer; the PEFT adapter it writes."""

import importlib.util
import os
import subprocess
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
TORCH_PY = Path("/work/torchvenv/bin/python")


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


_PEFT_SNIPPET = r"""
import sys, numpy as np, torch
from transformers import LlamaForCausalLM
from peft import PeftModel
base = LlamaForCausalLM.from_pretrained(sys.argv[1]).eval()
model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
ids = torch.from_numpy(np.load(sys.argv[3])).long()
with torch.no_grad():
  np.save(sys.argv[4], model(input_ids=ids).logits.numpy())
"""


@pytest.mark.slow
@pytest.mark.skipif(not TORCH_PY.exists(), reason="needs the torch + peft venv")
def test_peft_loads_the_finetuned_adapter(run, tmp_path):
  _, work, _ = run
  module, params, config = jp.models.from_hf(FIX / "llama_tiny")
  adapter, _ = jp.adapt.load_peft(work / "adapter", config)
  ids = (np.arange(16)[None] * 5 % 256).astype(np.int64)
  np.save(tmp_path / "ids.npy", ids)
  subprocess.run([str(TORCH_PY), "-c", _PEFT_SNIPPET, str(FIX / "llama_tiny"),
                  str(work / "adapter"), str(tmp_path / "ids.npy"), str(tmp_path / "out.npy")],
                 check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  ours = module.apply({"params": jp.adapt.merge(params, adapter)}, jnp.asarray(ids))
  np.testing.assert_allclose(np.load(tmp_path / "out.npy"), ours, atol=1e-5)


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
