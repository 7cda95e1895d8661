"""Training: data-parallel LM trainer with mid-training growth, configs under ``configs/``.

Run ``python -m jaxparams.train --config=configs/tokenformer_lm.py:runlocal --workdir=/tmp/run``.

* :func:`train` / :func:`default_config` / :class:`TrainResult` (:mod:`.trainer`).
* :mod:`.config` (fields, defaults, checks), :mod:`.mesh` (devices, shardings), :mod:`.optim`
  (:class:`~jaxparams.train.optim.OptimFeatures`, learning rate, AdamW), :mod:`.step` (the
  compiled model, step and growth): the trainer's pieces.
* :mod:`.data`: byte-level corpus of the Python standard library's source.
* :mod:`.growth`: growth hooks (TokenFormer ``grow``, Net2Net widen/deepen) and optimizer-state
  transfer.
* :mod:`.checkpoint`: orbax checkpoints with a config fingerprint.
* :mod:`.logging`: JSONL metrics and the loss plot.
* :mod:`.zo` / :mod:`.zo2`: MeZO zeroth-order steps (seed-regenerated SPSA) and the ZO2 driver
  streaming blocks from host memory.
* :mod:`.wtacrs`: WTA-CRS sampled weight gradients as a ``custom_vjp`` matmul for ``dot=``.
* :mod:`.lora`: LoRA/DoRA fine-tuning (the ``'lora'`` family) saved as a PEFT adapter.
* :mod:`.snapshot`: asynchronous in-memory snapshots with XOR parity across nodes.
* :mod:`.eata` / :mod:`.digits`: EATA and Tent test-time adaptation; digits under shifts.

Example:
  >>> from jaxparams import train
  >>> cfg = train.default_config()
  >>> cfg.model.name
  'tokenformer'
"""

from jaxparams.train import checkpoint, data, families, growth, logging
from jaxparams.train import digits, eata, snapshot, wtacrs, zo, zo2
from jaxparams.train.config_args import parse_arg
from jaxparams.train.trainer import ConfigError, TrainResult, check_config, default_config, train

__all__ = ["ConfigError", "TrainResult", "check_config", "checkpoint", "data", "default_config",
           "digits", "eata", "families", "growth", "logging", "parse_arg", "snapshot", "train",
           "wtacrs", "zo", "zo2"]
