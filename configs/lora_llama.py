r"""LoRA fine-tuning of a frozen HF Llama on the trainer's corpus (Python standard library bytes).

Only the adapter trains (the ``'lora'`` model family's params are the LoRA's ``a``/``b``; the
base is a constant and the scales are not parameters); checkpoints and exact resume come from the
trainer; ``train_lora`` writes the adapter in PEFT's format to ``WORKDIR/adapter`` at the end.

  python -m jaxparams.train.lora --config=configs/lora_llama.py:base=/path/to/hf_llama \
      --workdir=/tmp/lora
  python -m jaxparams.train.lora --config=configs/lora_llama.py:runlocal --workdir=/tmp/l

Arguments (``:arg``): ``runlocal`` (seconds on one CPU; base = the tiny Llama of the tests'
fixtures), ``base=PATH`` (an HF Llama folder whose vocabulary covers the 256 byte values),
``dora=1`` (DoRA instead of LoRA), ``rank=R``, ``steps=N`` (override the number of steps).
"""

import pathlib

import ml_collections

from jaxparams.train import config_args, trainer

_TINY = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "llama_tiny"


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, runlocal=False, base="", dora=False, rank=16, steps=0)
  config = trainer.default_config()
  config.num_steps = 2000
  config.batch_size = 32
  config.seq_len = 256
  config.eval_batch_size = 32
  config.eval_every = 200
  config.log_every = 20
  config.checkpoint_every = 500
  config.optim.lr = 2e-3
  config.optim.warmup_steps = 100
  config.optim.weight_decay = 0.0
  config.model = ml_collections.ConfigDict(dict(
      name="lora", base=arg.base or str(_TINY), rank=int(arg.rank), alpha=2.0 * int(arg.rank),
      use_dora=bool(arg.dora), use_rslora=False,
      targets=("**/attn/*_proj/kernel", "**/mlp/*_proj/kernel")))
  if arg.runlocal:
    config.num_steps = 3
    config.batch_size = 8
    config.seq_len = 32
    config.eval_batch_size = 8
    config.eval_every = 0
    config.log_every = 1
    config.checkpoint_every = 2
    config.optim.lr = 2e-2
    config.optim.warmup_steps = 1
    config.data.max_bytes = 100_000
    config.model.rank = 4
    config.model.alpha = 8.0
    config.model.base = str(_TINY)
  if arg.steps:
    config.num_steps = int(arg.steps)
    config.checkpoint_every = max(1, int(arg.steps) // 2)
  return config
