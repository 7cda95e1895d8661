"""Peer reference: torch ``auto-round`` on all-MiniLM-L6-v2 with quant_quality.py's sentences.

Runs in a separate torch venv (never a jaxparams dependency):
  python3 -m venv /work/tv-autoround
  echo /work/torchvenv/lib/python3.11/site-packages > /work/tv-autoround/lib/python3.11/site-packages/_t.pth
  /work/tv-autoround/bin/pip install --no-deps auto-round py-cpuinfo
The sentences file (minilm path, calibration and evaluation sentences) is written with the
jaxparams venv:
  .venv/bin/python -c "import json; from jaxparams.calib import corpus; \
    from jaxparams.models.minilm import minilm_path; c = corpus.docstring_sentences(190); \
    e = [s for s in corpus.sklearn_sentences() + corpus.reference_sentences() if s not in set(c)][:256]; \
    json.dump({'path': str(minilm_path()), 'calib': c, 'evals': e}, open('sents.json', 'w'))"
Run: /work/tv-autoround/bin/python benchmarks/autoround_torch_ref.py BITS GROUP ITERS sents.json
Measured 2026-12-01 (auto-round 0.16.1, torch 2.13 CPU): 4-bit g128, 2 iterations: mean 0.9557,
min 0.9051 (= RTN), 179 s; the 200-iteration run did not finish under the shared CPU's load.
"""
import sys, time, json
import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer
bits, group, iters = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
D = json.load(open(sys.argv[4])); path = D["path"]
tok = AutoTokenizer.from_pretrained(path)
calib, evals = D["calib"], D["evals"]
written = [l.strip() for l in open(__import__("pathlib").Path(__file__).parent / "data" / "heldout_sentences.txt") if l.strip()]

def embed(model, sents):
  out = []
  with torch.no_grad():
    for i in range(0, len(sents), 64):
      b = tok(sents[i:i+64], padding=True, truncation=True, max_length=256, return_tensors="pt")
      h = model(**b).last_hidden_state
      m = b["attention_mask"].unsqueeze(-1).float()
      e = (h * m).sum(1) / m.sum(1)
      out.append(torch.nn.functional.normalize(e, dim=-1))
  return torch.cat(out).numpy()

fp = AutoModel.from_pretrained(path).float().eval()
ref, ref_w = embed(fp, evals), embed(fp, written)
model = AutoModel.from_pretrained(path).float().eval()
from auto_round import AutoRound
t0 = time.time()
ar = AutoRound(model, tok, bits=bits, group_size=group, sym=False, iters=iters, nsamples=len(calib),
               seqlen=64, batch_size=8, dataset=calib, amp=False, device_map="cpu", seed=42)
ar.quantize()
secs = time.time() - t0
m = ar.model if hasattr(ar, "model") else model
cos = (embed(m, evals) * ref).sum(1); cw = (embed(m, written) * ref_w).sum(1)
print(f"TORCH_AUTOROUND {bits}g{group} iters {iters}: mean {cos.mean():.4f} min {cos.min():.4f} written {cw.mean():.4f}/{cw.min():.4f} {secs:.0f}s", flush=True)
