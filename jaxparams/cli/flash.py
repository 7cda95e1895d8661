"""``jaxparams flash bundle|unbundle|run``: LLM in a flash (Alizadeh et al. 2023).

Thin: parses, calls :mod:`jaxparams.flash`, prints a summary / writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
  from jaxparams.cli.main import SUMMARIES  # pylint: disable=import-outside-toplevel
  p = sub.add_parser("flash", help=SUMMARIES["flash"],
                     description="Row-column bundling of FFN checkpoints and a runtime that "
                     "loads FFN neurons on demand (sparsity predictors, windowing).")
  s = p.add_subparsers(dest="flash_command", metavar="ACTION")
  s.required = True
  b = s.add_parser("bundle", help="rewrite FFNs as one [gate|up|down] row per neuron")
  b.add_argument("src", help="HF Llama-family folder or .safetensors file")
  b.add_argument("out", help="output folder (atomic)")
  b.add_argument("--layout", default="bundled", choices=("bundled", "split"),
                 help="bundled (default) or split: the neuron-major unbundled layout")
  b.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
  b.set_defaults(func=_bundle)
  u = s.add_parser("unbundle", help="the exact inverse of bundle")
  u.add_argument("src", help="bundled folder")
  u.add_argument("out", help="output folder (atomic)")
  u.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
  u.set_defaults(func=_unbundle)
  r = s.add_parser("run", help="greedy decoding with FFN neurons loaded on demand")
  r.add_argument("model", help="HF folder, or one written by `flash bundle`")
  r.add_argument("--prompt-ids", required=True, help="comma-separated token ids, e.g. 1,2,3")
  r.add_argument("--new-tokens", type=int, default=8, help="tokens to generate (default 8)")
  r.add_argument("--memory-budget", default="0.5",
                 help="fraction of the model's bytes (<= 1), bytes or a size like 800MB")
  mode = r.add_mutually_exclusive_group()
  mode.add_argument("--oracle", action="store_true",
                    help="load exactly the neurons with gate x > 0 (correctness check)")
  mode.add_argument("--predictors", default=None, help="folder of trained predictors")
  mode.add_argument("--naive", action="store_true", help="read each layer's FFN whole")
  r.add_argument("--window", type=int, default=5,
                 help="keep neurons active in the last K tokens (0: reload every token)")
  r.add_argument("--no-bundle", action="store_true",
                 help="read the split (unbundled) layout: three reads per neuron run")
  r.add_argument("--threads", type=int, default=8, help="reader threads (default 8)")
  r.add_argument("--report", required=True, help="JSON report file to write")
  r.set_defaults(func=_run)


def _bundle(args: argparse.Namespace) -> int:
  from jaxparams import flash  # pylint: disable=import-outside-toplevel
  s = flash.bundle(args.src, args.out, layout=args.layout, overwrite=args.overwrite)
  print(f"wrote {args.out}: {s['tensors']} tensors ({args.layout}), {s['bytes_written']} bytes")
  return 0


def _unbundle(args: argparse.Namespace) -> int:
  from jaxparams import flash  # pylint: disable=import-outside-toplevel
  s = flash.unbundle(args.src, args.out, overwrite=args.overwrite)
  print(f"wrote {args.out}: {s['tensors']} tensors, {s['bytes_written']} bytes")
  return 0


def _ids(text: str) -> list[int]:
  try:
    ids = [int(t) for t in text.split(",") if t.strip()]
  except ValueError:
    raise ValueError(f"--prompt-ids {text!r}: expected comma-separated integers") from None
  if not ids:
    raise ValueError("--prompt-ids: no token ids given")
  return ids


def _run(args: argparse.Namespace) -> int:
  from jaxparams import flash  # pylint: disable=import-outside-toplevel
  if not (args.naive or args.oracle or args.predictors):
    raise ValueError("flash run: choose --naive, --oracle or --predictors DIR")
  budget = args.memory_budget
  try:
    budget = float(budget)
  except ValueError:
    pass
  cfg = flash.FlashConfig(memory_budget=budget, naive=args.naive, oracle=args.oracle,
                          window=args.window, threads=args.threads)
  # A folder: read by the runtime after its baseline RSS (the predictors count in the budget).
  with flash.FlashModel(args.model, cfg, predictors=args.predictors,
                        bundled=not args.no_bundle) as m:
    report = m.generate(_ids(args.prompt_ids), args.new_tokens)
  out = Path(args.report)
  tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
  tmp.write_text(json.dumps(report, indent=1))
  os.replace(tmp, out)
  print(f"{len(report['tokens'])} tokens at {report['tokens_per_s']:.2f} tok/s; "
        f"{report['bytes_read_per_token'] / 1e6:.2f} MB read per token "
        f"({100 * report['bytes_read_fraction_of_ffn']:.2f}% of the FFN) in "
        f"{report['read_calls_per_token']:.0f} calls; peak RSS {report['peak_rss_bytes'] / 1e6:.0f} MB")
  return 0
