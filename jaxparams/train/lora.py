"""LoRA / DoRA fine-tuning run by the trainer, the adapter saved in PEFT's format.

The ``'lora'`` model family (:class:`jaxparams.adapt.finetune.LoraLM`, registered in
:mod:`jaxparams.train.families`) trains only the adapter; :func:`train_lora` runs
:func:`jaxparams.train.train` with it and writes the adapter as a PEFT folder
(``workdir/adapter``) when the run has finished. It lives here, above :mod:`jaxparams.adapt`,
because it drives the trainer (the adapter model and the PEFT writer are ``adapt``'s).

  python -m jaxparams.train.lora --config=configs/lora_llama.py:runlocal --workdir=/tmp/lora

Example:
  >>> from jaxparams.train.lora import train_lora
  >>> train_lora.__name__
  'train_lora'
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax

from jaxparams.adapt import finetune
from jaxparams.train import families, trainer

__all__ = ["train_lora"]


def train_lora(config: Any, workdir: str | pathlib.Path, **kwargs: Any) -> trainer.TrainResult:
  """``jaxparams.train.train`` then ``adapt.finetune.save_adapter`` to ``workdir/adapter``.

  Args:
    config: a trainer config whose ``config.model.name`` is ``'lora'``
      (``configs/lora_llama.py``).
    workdir: the run's folder (checkpoints, metrics; the PEFT adapter in ``workdir/adapter``).
    **kwargs: forwarded to :func:`jaxparams.train.train` (``progress=``, ...).

  Returns:
    The trainer's :class:`~jaxparams.train.TrainResult`. The adapter is written only when the run
    reached ``config.num_steps`` (a stopped run resumes first).
  """
  result = trainer.train(config, workdir, **kwargs)
  if result.step == int(config.num_steps) and jax.process_index() == 0:
    fam = families.get_family(config.model.name)
    mc = families.model_config_from(fam, config.model)
    finetune.save_adapter(result.params, mc, pathlib.Path(workdir) / "adapter", overwrite=True)
  return result


def _main(argv) -> None:  # pragma: no cover - thin CLI
  del argv
  from absl import flags
  from jaxparams.train.__main__ import format_record
  result = train_lora(flags.FLAGS.config, flags.FLAGS.workdir,
                      progress=lambda r: print(format_record(r), flush=True))
  print(f"done: {result.step} steps; PEFT adapter in {result.workdir}/adapter")


if __name__ == "__main__":  # pragma: no cover
  from absl import app
  from jaxparams.train.__main__ import define_flags
  define_flags()
  app.run(_main)
