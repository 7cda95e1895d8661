"""``jaxparams edit MODEL_DIR REQUESTS.jsonl OUT_DIR --method rome|memit|alphaedit --layers L``.

Edits facts in a Llama or BERT masked-LM (``BertForMaskedLM``) HF checkpoint (with
``tokenizer.json``); requests in EasyEdit's form
(``{"prompt": "... {} ...", "subject": ..., "target_new": ...}``, JSONL). Key statistics come
from ``--stats DIR`` (saved) or ``--stats-text FILE`` (streamed, and saved to ``--stats`` when
given; found again by the content fingerprint of the tensors they came from, never by folder
name). Writes the edited checkpoint atomically and the delta in ``OUT_DIR/delta`` (with the
fingerprints of the edited tensors before and after). ``jaxparams edit EDITED_DIR OUT_DIR
--rollback DELTA_DIR`` restores the original tensors bit-exactly; ``--apply DELTA_DIR``
re-applies a delta to another copy of the same model. Both refuse, writing nothing, a model
whose tensors do not match the delta (another model, a second apply, a second rollback).

Every parameter of the method (its dataclass in ``jaxparams.edit.registry``) is settable:
``--params FILE`` (JSON/YAML ``{name: value}``) then ``--set name=value`` (repeatable);
``--list-params`` prints them with their values.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run", "USAGE"]

USAGE = """
  %(prog)s MODEL_DIR REQUESTS.jsonl OUT_DIR --layers L [--method rome|memit|alphaedit]
      (--stats DIR | --stats-text FILE [--stats DIR]) [--params FILE] [--set NAME=VALUE ...]
      [--fact-token subject_last|last] [--overwrite]
  %(prog)s MODEL_DIR OUT_DIR (--rollback DELTA_DIR | --apply DELTA_DIR) [--overwrite]
  %(prog)s --method NAME --list-params [--params FILE] [--set NAME=VALUE ...]"""


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("edit", help="Edit facts in a checkpoint (ROME, MEMIT, AlphaEdit); roll back.",
                     description=__doc__.split("\n\n", 1)[1], usage=USAGE)
  p.add_argument("model", metavar="MODEL_DIR", nargs="?", help="HF Llama or BertForMaskedLM checkpoint with tokenizer.json")
  p.add_argument("rest", nargs="*", metavar="REQUESTS.jsonl OUT_DIR",
                 help="requests and output folder (only OUT_DIR with --rollback/--apply)")
  from jaxparams.edit import registry  # pylint: disable=g-import-not-at-top
  runs = registry.METHODS.checkpoint_names()
  p.add_argument("--method", default="rome", metavar="METHOD",  # checked by the library
                 help=f"the method: {', '.join(runs)} edit checkpoints (default rome); "
                 f"{', '.join(n for n in registry.METHODS.names() if n not in runs)} only with "
                 "--list-params (jaxparams.edit in a program)")
  p.add_argument("--layers", default=None, help="edited layers: 3 or 3,4,5 or 3-5")
  p.add_argument("--stats", default=None, help="folder of saved key statistics")
  p.add_argument("--stats-text", default=None, help="text file (one line a sample) for stats")
  p.add_argument("--fact-token", default=None,
                 help="subject_last (default) or last (= --set target.fact_token=...)")
  p.add_argument("--params", default=None, metavar="FILE",
                 help="JSON/YAML file of the method's parameters ({name: value}; nested or "
                      "dotted names, e.g. target.v_num_grad_steps)")
  p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="assign",
                 help="set one parameter (repeatable; after --params), e.g. "
                      "--set mom2_update_weight=5000 --set target.v_lr=0.1")
  p.add_argument("--list-params", action="store_true",
                 help="print the method's parameters and defaults, then exit")
  p.add_argument("--rollback", default=None, metavar="DELTA_DIR", help="roll a delta back")
  p.add_argument("--apply", default=None, metavar="DELTA_DIR", help="re-apply a delta")
  p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
  from jaxparams.cli.common import add_quiet  # pylint: disable=g-import-not-at-top
  add_quiet(p)
  p.add_argument("--paraphrase", default=None, metavar="TEMPLATE",
                 help="a rephrased prompt ({} = the subject) also scored before/after, for every "
                      "request (default: each request's rephrase_prompt), e.g. "
                      "'The home town of {} is'")
  p.add_argument("--show", type=int, default=5, metavar="N",
                 help="print before/after probabilities for the first N requests (default 5; "
                      "0: none)")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  from jaxparams.edit import checkpoint  # pylint: disable=g-import-not-at-top
  if args.list_params:
    hp = checkpoint.edit_params(args.method, params_file=args.params, assignments=args.assign,
                                fact_token=args.fact_token)
    print(_describe(args.method, hp))
    return 0
  if args.model is None:
    raise ValueError("give MODEL_DIR REQUESTS.jsonl OUT_DIR (or MODEL_DIR OUT_DIR with "
                     "--rollback/--apply)")
  delta_dir = args.rollback or args.apply
  if args.rollback and args.apply:
    raise ValueError("give --rollback or --apply, not both")
  if delta_dir:
    if len(args.rest) != 1:
      raise ValueError("with --rollback/--apply give MODEL_DIR OUT_DIR")
    info = checkpoint.apply_delta_checkpoint(args.model, delta_dir, args.rest[0],
                                             rollback=bool(args.rollback),
                                             overwrite=args.overwrite)
    print(f"{'rolled back' if info['rollback'] else 'applied'} {len(info['tensors'])} tensor(s) "
          f"-> {info['out']}")
    return 0
  if len(args.rest) != 2:
    raise ValueError("give MODEL_DIR REQUESTS.jsonl OUT_DIR")
  if args.layers is None:
    raise ValueError("--layers is required (e.g. --layers 1 or --layers 0-2)")
  from jaxparams.cli.common import status_line  # pylint: disable=g-import-not-at-top
  with status_line(f"edit: {args.method} into layer(s) {args.layers} (statistics, edit, write)",
                   quiet=getattr(args, "quiet", False)):
    info = checkpoint.edit_checkpoint(args.model, args.rest[0], args.rest[1], method=args.method,
                                      layers=args.layers, stats_dir=args.stats,
                                      stats_text=args.stats_text, overwrite=args.overwrite,
                                      fact_token=args.fact_token, params_file=args.params,
                                      assignments=args.assign)
  print(f"{info['method']}: {info['n_requests']} request(s) into layer(s) {info['layers']} in "
        f"{info['seconds']:.1f} s -> {info['out']} (delta in {info['out']}/delta)")
  if args.show > 0:
    _print_scores(args.model, args.rest[0], info["out"], args.show, args.paraphrase)
  return 0


def _print_scores(model_dir: str, requests_file: str, out_dir: str, n: int,
                  paraphrase: str | None) -> None:
  """Prints P(new target) and P(old answer) before -> after for the first ``n`` requests."""
  # pylint: disable=g-import-not-at-top
  from jaxparams.edit import report, sites
  from jaxparams.edit import requests as req_lib
  from jaxparams.models import hf
  from jaxparams.models.hf_open import hf_tokenizer
  module, before, _ = hf.from_hf(model_dir)
  if sites.of(module).masked:
    print("(before/after scores are printed for causal LMs; score a masked LM with "
          "jaxparams.edit.evaluate)")
    return
  _, after, _ = hf.from_hf(out_dir)
  tok = hf_tokenizer(model_dir, purpose="scoring the edit")
  reqs = req_lib.read_requests(requests_file, tok)[:n]
  # --paraphrase for every request, else each request's own rephrase_prompt (EasyEdit's field)
  paraphrases = [paraphrase or r.rephrase for r in reqs]
  rows = report.before_after(module, before, after, tok, reqs, paraphrases=paraphrases)
  print(report.format_rows(rows))
  old = ("the request's ground_truth (else the model's answer before the edit)"
         if any(r.ground_truth for r in reqs) else "the model's answer before the edit")
  print(f"P(new) is the probability of target_new after the prompt, P(old) that of {old}; the "
        "edit took when P(new) rises above P(old), and generalises when the paraphrase follows"
        + ("" if any(paraphrases) else
           " (give one with --paraphrase or rephrase_prompt in the requests)") + ".")


def _describe(method: str, hp) -> str:
  from jaxparams.edit import registry  # pylint: disable=g-import-not-at-top
  rec = registry.get(method)
  lines = [f"{rec.name}: {rec.description}"]
  for name in rec.param_names():
    v = hp
    for part in name.split("."):
      v = getattr(v, part)
    lines.append(f"  {name} = {v!r}")
  return "\n".join(lines)
