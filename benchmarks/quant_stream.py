"""Peak memory of streaming quantization (``jaxparams quantize``) against model size.

Writes ``benchmarks/results/quant_stream.md``. Each run is a fresh
``jaxparams quantize`` process under ``/usr/bin/time -v`` (peak RSS = "Maximum
resident set size"), on synthetic bf16 Llama checkpoints from
:func:`jaxparams.demo.tiny_llama.write_llama`:

* RTN 4-bit (group 128) on ``--rtn-size`` (``large``: ~0.54B parameters, the
  generator of ``benchmarks/merge_vs_mergekit.py``): the peak must be well under the
  fp32 size of the weights (the whole model is never in memory);
* GPTQ 4-bit on a model and on one with twice the layers (same width): the peak
  must not double (one block in memory at a time, plus activations).

Usage::

  python benchmarks/quant_stream.py --root /tmp/qstream [--rtn-size large]
      [--gptq-size blocks-small] [--gptq-layers 4] [--calib-lines 8]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jaxparams.demo.tiny_llama import llama_config, write_llama
from jaxparams.io import open_checkpoint

SIZES = {
    "large": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                  num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16),
    "medium": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                   num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16),
    # GPTQ runs: small vocabulary so the transformer blocks dominate the size.
    "blocks": dict(vocab_size=4096, hidden_size=1024, intermediate_size=2816,
                   num_hidden_layers=6, num_attention_heads=16, num_key_value_heads=16),
    "wide": dict(vocab_size=4096, hidden_size=2048, intermediate_size=5632,
                 num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=16),
    "blocks-small": dict(vocab_size=2048, hidden_size=512, intermediate_size=1536,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8),
    "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
}


def build(root: Path, size: str, layers: int | None = None) -> tuple[Path, int]:
  """A bf16 Llama checkpoint with a word-level tokenizer; returns (folder, parameters)."""
  spec = dict(SIZES[size])
  if layers is not None:
    spec["num_hidden_layers"] = layers
  path = root / f"{size}-L{spec['num_hidden_layers']}-bf16"
  if not (path / "tokenizer.json").is_file():
    shutil.rmtree(path, ignore_errors=True)
    cfg = llama_config(**spec, dtype="bfloat16")
    write_llama(path, cfg=cfg, seed=0, dtype="bfloat16")
    _tokenizer(path, spec["vocab_size"])
  with open_checkpoint(path) as r:
    n = sum(int(np.prod(r.spec(k).shape)) for k in r.names())
  return path, n


def _tokenizer(path: Path, vocab_size: int) -> None:
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from jaxparams.calib import corpus  # pylint: disable=g-import-not-at-top
  vocab = {"<pad>": 0, "<unk>": 1}
  for s in corpus.docstring_sentences(2000):
    for w in s.lower().split():
      if w not in vocab and len(vocab) < vocab_size:
        vocab[w] = len(vocab)
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.save(str(path / "tokenizer.json"))


def timed(cmd: list[str]) -> tuple[float, float]:
  """Runs under /usr/bin/time -v: (wall seconds, peak RSS GB)."""
  t0 = time.perf_counter()
  p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if p.returncode != 0:
    raise RuntimeError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
  m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
  return wall, int(m.group(1)) / 1e6 if m else float("nan")


def quantize(src: Path, out: Path, method: str, calib: Path | None, args,
             rules: Path | None = None) -> tuple[float, float]:
  exe = str(Path(sys.executable).parent / "jaxparams")
  cmd = [exe, "quantize", str(src), str(out), "--method", method, "--bits", "4",
         "--group-size", "128", "-q", "--overwrite",
         "--max-shard-size", str(args.max_shard_bytes)]
  if rules is not None:
    cmd += ["--rules", str(rules)]
  if calib is not None:
    cmd += ["--calibration", str(calib), "--max-length", str(args.calib_tokens),
            "--max-samples", str(args.calib_lines), "--batch-size", str(args.calib_lines)]
  return timed(cmd)


def baseline_rss() -> float:
  """Peak RSS of a process that only imports jaxparams and jax (the floor of any run)."""
  _, rss = timed([sys.executable, "-c", "import jax, jax.numpy as jnp, jaxparams.quant; "
                  "jnp.ones(4).block_until_ready()"])
  return rss


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--root", default="/tmp/jaxparams_quant_stream")
  ap.add_argument("--rtn-size", default="large", choices=sorted(SIZES))
  ap.add_argument("--gptq-size", default="blocks-small", choices=sorted(SIZES))
  ap.add_argument("--gptq-layers", type=int, default=4, help="layers of the smaller GPTQ model "
                  "(the larger one has twice as many)")
  ap.add_argument("--calib-lines", type=int, default=8)
  ap.add_argument("--calib-tokens", type=int, default=64)
  ap.add_argument("--max-shard-bytes", type=float, default=2.5e8)
  ap.add_argument("--parts", default="rtn,gptq,gptq-wide",
                  help="rtn: RTN on --rtn-size; gptq: GPTQ on every Linear of --gptq-size with "
                  "L and 2L layers; gptq-wide: 'wide' models (width of 'large') with 4 and 8 "
                  "layers, GPTQ on block 0 and RTN on the other blocks (every block still streams "
                  "through the calibration forward); rows are cached in ROOT/rows.json")
  ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quant_stream.md"))
  args = ap.parse_args()
  root = Path(args.root)
  root.mkdir(parents=True, exist_ok=True)
  calib = root / "calib.txt"
  from jaxparams.calib import corpus  # pylint: disable=g-import-not-at-top
  calib.write_text("\n".join(corpus.docstring_sentences(200)) + "\n")
  floor = baseline_rss()
  import json  # pylint: disable=g-import-not-at-top
  cache = root / "rows.json"
  done = json.loads(cache.read_text()) if cache.is_file() else {}
  print(f"import floor {floor:.2f} GB", flush=True)
  parts = args.parts.split(",")

  def record(key, row):
    done[key] = row
    cache.write_text(json.dumps(done, indent=1))
    print(row, flush=True)

  if "rtn" in parts:
    src, n = build(root, args.rtn_size)
    wall, rss = quantize(src, root / "out-rtn", "rtn", None, args)
    record("rtn", ("rtn 4-bit g128 (all Linear)", src.name, n, wall, rss))
    shutil.rmtree(root / "out-rtn", ignore_errors=True)
  if "gptq" in parts:
    for i, layers in enumerate((args.gptq_layers, 2 * args.gptq_layers)):
      src, n = build(root, args.gptq_size, layers)
      wall, rss = quantize(src, root / "out-gptq", "gptq", calib, args)
      record(f"gptq{i}", ("gptq 4-bit g128 (all Linear)", src.name, n, wall, rss))
      shutil.rmtree(root / "out-gptq", ignore_errors=True)
  if "gptq-wide" in parts:
    rules = root / "rules_gptq_block0.yml"
    rules.write_text("- pattern: 'layers_0/**'\n  method: gptq\n- pattern: '**'\n  method: rtn\n")
    for i, layers in enumerate((4, 8)):
      src, n = build(root, "wide", layers)
      wall, rss = quantize(src, root / "out-gptq", "gptq", calib, args, rules=rules)
      record(f"wide{i}", ("gptq block 0 + rtn, streamed block by block", src.name, n, wall,
                          rss))
      shutil.rmtree(root / "out-gptq", ignore_errors=True)
  rows = [done[k] for k in ("rtn", "gptq0", "gptq1", "wide0", "wide1") if k in done]
  lines = [
      "# Streaming quantization: peak RSS against model size",
      "",
      f"{datetime.date.today()} on {platform.machine()} ({os.cpu_count()} CPUs, shared with other "
      "engineers' jobs: wall times are noisy), JAX CPU. Each row is one `jaxparams quantize` "
      "process under `/usr/bin/time -v`; synthetic bf16 Llama checkpoints "
      "(`jaxparams.demo.tiny_llama.write_llama`). Calibration for GPTQ: "
      f"{args.calib_lines} lines x {args.calib_tokens} tokens. Output shards of "
      f"{args.max_shard_bytes / 1e6:.0f} MB (the writer buffers one shard). A process that only "
      f"imports jax + jaxparams peaks at {floor:.2f} GB.",
      "",
      "| run | model | params | bf16 on disk GB | fp32 weights GB | peak RSS GB | "
      "RSS / fp32 | wall s |",
      "|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  for name, model, n, wall, rss in rows:
    lines.append(f"| {name} | {model} | {n / 1e6:.0f}M | {2 * n / 1e9:.2f} | {4 * n / 1e9:.2f} | "
                 f"{rss:.2f} | {rss / (4 * n / 1e9):.2f} | {wall:.0f} |")
  for k1, k2 in (("gptq0", "gptq1"), ("wide0", "wide1")):
    if k1 in done and k2 in done:
      g1, g2 = done[k1], done[k2]
      lines.append(f"\n{g1[0]}: model x{g2[2] / g1[2]:.2f} parameters -> peak RSS "
                   f"x{g2[4] / g1[4]:.2f} (above the import floor: "
                   f"x{(g2[4] - floor) / max(g1[4] - floor, 1e-9):.2f}).")
  lines.append("")
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
