"""``python -m jaxparams.train --config=configs/NAME.py[:arg] --workdir=DIR [--config.x=y ...]``.

Kept short (flax examples style): all logic is in :mod:`jaxparams.train.trainer`. The config is
locked, so ``--config.unknown_field=1`` is an error naming the field. Progress lines go to stdout;
library INFO logs (orbax) are hidden unless ``--verbosity`` is given.
"""

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


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  result = trainer.train(flags.FLAGS.config, flags.FLAGS.workdir,
                         progress=lambda r: print(format_record(r), flush=True))
  print(f"done: {result.step} steps; metrics {result.workdir}/metrics.jsonl, plot "
        f"{result.workdir}/loss.png")


if __name__ == "__main__":
  define_flags()
  app.run(main)
