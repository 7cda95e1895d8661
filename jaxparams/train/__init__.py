"""Training: data-parallel LM trainer with mid-training growth, configs under ``configs/``.

Run ``python -m jaxparams.train --config=configs/tokenformer_lm.py:runlocal --workdir=/tmp/run``.

* :func:`train` / :func:`default_config` / :class:`TrainResult` (:mod:`.trainer`).
* :mod:`.data`: byte-level corpus of the Python standard library's source.
* :mod:`.growth`: growth hooks (TokenFormer ``grow``, Net2Net widen/deepen) and optimizer-state
  transfer.
* :mod:`.checkpoint`: orbax checkpoints with a config fingerprint.
* :mod:`.logging`: JSONL metrics and the loss plot.

Example:
  >>> from jaxparams import train
  >>> cfg = train.default_config()
  >>> cfg.model.name
  'tokenformer'
"""

from jaxparams.train import checkpoint, data, families, growth, logging
from jaxparams.train.config_args import parse_arg
from jaxparams.train.trainer import TrainResult, check_config, default_config, train

__all__ = ["TrainResult", "check_config", "checkpoint", "data", "default_config", "families",
           "growth", "logging", "parse_arg", "train"]
