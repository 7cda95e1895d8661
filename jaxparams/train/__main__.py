"""``python -m jaxparams.train --config=configs/NAME.py[:arg] --workdir=DIR [--config.x=y ...]``.

Kept short (flax examples style): all logic is in :mod:`jaxparams.train.trainer`. The config is
locked, so ``--config.unknown_field=1`` is an error naming the field. Progress lines go to stdout;
library INFO logs (orbax) are hidden unless ``--verbosity`` is given.

Config errors (a bad ``--config`` file or argument, an unknown field, a checkpoint of another
config) print one line ``error: ...`` to stderr and exit with code 2. Ctrl-C / SIGTERM finish the
current step, save a checkpoint and exit with ``128 + signal`` (130 / 143) without a traceback;
rerunning the same command resumes.
"""

import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxparams.train import trainer


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines ``--config`` (an ml_collections config file) and ``--workdir`` on ``flag_values``."""
  config_flags.DEFINE_config_file(
      "config", None, "Path to a config file (configs/*.py), optionally ':arg'.",
      flag_values=flag_values, lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and loss.png.",
                      flag_values=flag_values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def format_record(r: dict) -> str:
  """One progress line for a JSONL record."""
  if r["event"] in ("base", "adapter"):  # configs/streamadapter.py stages
    return f"{r['event']} step {r['step']:>6}  loss {r['loss']:.4f}"
  if r["event"] == "train":
    return (f"step {r['step']:>6}  loss {r['loss']:.4f}  lr {r['lr']:.2e}  "
            f"{r['tokens_per_s']:,.0f} tok/s  params {r['n_params']:,}")
  if r["event"] == "eval":
    return f"step {r['step']:>6}  eval_loss {r['eval_loss']:.4f}"
  if r["event"] == "growth":
    return (f"step {r['step']:>6}  GROWTH {r['hook']}: params {r['n_params_before']:,} -> "
            f"{r['n_params_after']:,}, eval loss {r['loss_before']:.6f} -> "
            f"{r['loss_after']:.6f}")
  return f"step {r.get('step', '?'):>6}  {r['event']}"


def one_line(error: BaseException) -> str:
  """A config error as one line (flag errors embed a traceback: keep its first and last line)."""
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)) and len(text) > 1 and text[0] in "'\"":
    text = text[1:-1].encode().decode("unicode_escape")  # ml_collections quotes its message
  lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
  if any(ln.startswith("Traceback") for ln in lines):
    lines = [lines[0], lines[-1]]
  return " ".join(lines) or type(error).__name__


def fail(error: BaseException) -> None:
  """Prints ``error: <one line>`` to stderr and exits with code 2."""
  print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl flag parsing (``app.run``'s ``flags_parser``) with one-line config errors, exit 2."""
  try:
    rest = flag_values(argv)
    getattr(flag_values.config, "keys")  # a config file that failed to load raises here
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    fail(e)
  return rest


def run_entry(config, workdir: str) -> int:
  """Runs a config that names its own driver (``config.entry = 'module:function'``, called as
  ``function(config, workdir, progress=...)``), e.g. ``configs/streamadapter.py``."""
  import importlib  # pylint: disable=g-import-not-at-top
  module, sep, fn = str(config.entry).partition(":")
  try:
    if not sep:
      raise ValueError(f"config.entry must be 'module:function', found {config.entry!r}")
    driver = getattr(importlib.import_module(module), fn)
    driver(config, workdir, progress=lambda r: print(format_record(r), flush=True))
  except (ImportError, AttributeError, ValueError) as e:
    fail(e)
  print(f"done: outputs in {workdir}")
  return 0


def run(config, workdir: str) -> int:
  """Trains; returns the exit code (0, or 128 + signal when interrupted). Config errors exit 2."""
  if "entry" in config:
    return run_entry(config, workdir)
  if config.get("task") == "hypernet":  # configs/logah.py: a graph hypernetwork, not one model
    from jaxparams.train import hypernet  # pylint: disable=g-import-not-at-top
    try:
      out = hypernet.run(config, workdir, progress=lambda r: print(
          f"step {r['step']:>6}  loss {r['loss']:.4f}  arch {r['arch']}", flush=True))
    except (TypeError, ValueError) as e:
      fail(e)
    print(f"done: hypernetwork {out}")
    return 0
  try:
    result = trainer.train(config, workdir, progress=lambda r: print(format_record(r), flush=True))
  except trainer.ConfigError as e:
    fail(e)
  if result.interrupted:
    print(f"interrupted by signal {result.interrupted} after step {result.step}: checkpoint "
          f"saved in {result.workdir}/checkpoints; rerun the same command to resume", flush=True)
    return 128 + result.interrupted
  print(f"done: {result.step} steps; metrics {result.workdir}/metrics.jsonl, plot "
        f"{result.workdir}/loss.png")
  return 0


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  sys.exit(run(flags.FLAGS.config, flags.FLAGS.workdir))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
