"""Checks against the PyTorch peers that load what jaxparams writes, runnable on any machine.

What a user's own tools do with our outputs, in the peer environment that
``benchmarks/peer_env.sh`` builds (torch CPU, transformers, PEFT):

* ``peft_finetuned_adapter``: the LoRA adapter written by LoRA fine-tuning
  (``configs/lora_llama.py``) loads in PEFT on the tiny Llama fixture, and PEFT's logits equal
  ours (the adapter merged into the base with ``jp.adapt.merge``) to ``1e-5``.
* ``transformers_refuses_jaxparams_layout``: transformers refuses the default quantized
  layout (``quantization_config`` without ``quant_method``) instead of loading garbage.

Usage::

  bash benchmarks/peer_env.sh /tmp/peer            # once
  python benchmarks/peer_checks.py --peer /tmp/peer/bin/python --out peer_checks.json

Exit status 0 when every check holds; the JSON holds each check's outcome and numbers.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"

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

_REFUSE_SNIPPET = ("import sys\nfrom transformers import AutoModel\n"
                   "try:\n  AutoModel.from_pretrained(sys.argv[1])\nexcept ValueError as e:\n"
                   "  print('REFUSED', e); sys.exit(0)\nprint('LOADED'); sys.exit(1)\n")


def _peer_env():
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["HF_HUB_OFFLINE"] = "1"
  return env


def peft_finetuned_adapter(peer: str, work: pathlib.Path) -> dict:
  """PEFT loads our fine-tuned LoRA adapter and computes our logits."""
  import jax.numpy as jnp
  import jaxparams as jp
  from jaxparams.adapt import finetune
  spec = importlib.util.spec_from_file_location("lora_cfg", REPO / "configs" / "lora_llama.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config("runlocal,steps=12")
  cfg.plot = False
  finetune.train_lora(cfg, work)
  module, params, config = jp.models.from_hf(FIX / "llama_tiny")
  adapter, _ = jp.adapt.load_peft(work / "adapter", config)
  ids = (np.arange(16)[None] * 5 % 256).astype(np.int64)
  np.save(work / "ids.npy", ids)
  subprocess.run([peer, "-c", _PEFT_SNIPPET, str(FIX / "llama_tiny"), str(work / "adapter"),
                  str(work / "ids.npy"), str(work / "out.npy")], check=True, env=_peer_env())
  ours = np.asarray(module.apply({"params": jp.adapt.merge(params, adapter)}, jnp.asarray(ids)))
  diff = float(np.max(np.abs(np.load(work / "out.npy") - ours)))
  return {"ok": diff <= 1e-5, "max_abs_diff": diff}


def transformers_refuses_jaxparams_layout(peer: str, work: pathlib.Path) -> dict:
  """transformers refuses our default quantized layout with a message about quant_method."""
  from jaxparams.quant import quantize_checkpoint
  src = work / "bert"
  shutil.copytree(FIX / "peft_bert_tiny", src)
  out = work / "q"
  quantize_checkpoint(src, out, [("**", ("rtn", {"bits": 4, "group_size": 16}))])
  r = subprocess.run([peer, "-c", _REFUSE_SNIPPET, str(out)], capture_output=True, text=True,
                     timeout=300, env=_peer_env())
  ok = r.returncode == 0 and "REFUSED" in r.stdout and "quant_method" in r.stdout
  return {"ok": ok, "peer_said": (r.stdout + r.stderr).strip().splitlines()[-1:]}


CHECKS = {"peft_finetuned_adapter": peft_finetuned_adapter,
          "transformers_refuses_jaxparams_layout": transformers_refuses_jaxparams_layout}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--peer", required=True,
                  help="python of the peer environment (benchmarks/peer_env.sh DIR: DIR/bin/python)")
  ap.add_argument("--out", required=True, help="JSON file for the outcomes")
  ap.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(CHECKS))
  a = ap.parse_args(argv)
  if not pathlib.Path(a.peer).is_file():
    raise SystemExit(f"--peer {a.peer}: no such python; build it with benchmarks/peer_env.sh")
  names = [n for n in a.only.split(",") if n] or list(CHECKS)
  unknown = sorted(set(names) - set(CHECKS))
  if unknown:
    raise SystemExit(f"unknown check(s) {unknown}; valid: {', '.join(CHECKS)}")
  results = {}
  for name in names:
    with tempfile.TemporaryDirectory() as tmp:
      results[name] = CHECKS[name](a.peer, pathlib.Path(tmp))
    print(name, results[name], flush=True)
  pathlib.Path(a.out).write_text(json.dumps(results, indent=1))
  return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
