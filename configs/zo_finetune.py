r"""Zeroth-order (MeZO) training of a small Llama byte-level LM: two forward passes per step.

``optim.name='mezo'``: SPSA with perturbations regenerated from the step's key (never stored), no
gradients and no optimizer state, so memory is that of inference (:mod:`jaxparams.train.zo`;
``zo.n_samples`` directions per step are averaged). Constant learning rate after a short warmup,
as MeZO's recipe; weight decay on matrices only.

  python -m jaxparams.train --config=configs/zo_finetune.py --workdir=/tmp/zo
  python -m jaxparams.train --config=configs/zo_finetune.py:runlocal --workdir=/tmp/zo_local

Arguments (``:arg``): ``runlocal`` (seconds on one CPU), ``n=N`` (SPSA directions per step).
"""

import ml_collections

from jaxparams.train import config_args, trainer


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, runlocal=False, n=1)
  config = trainer.default_config()
  config.num_steps = 2000
  config.batch_size = 32
  config.seq_len = 128
  config.eval_batch_size = 32
  config.eval_every = 100
  config.log_every = 20
  config.checkpoint_every = 500
  config.optim.name = "mezo"
  config.optim.lr = 3e-3
  config.optim.warmup_steps = 10
  config.optim.end_lr_ratio = 1.0
  config.optim.weight_decay = 0.0
  config.zo.eps = 1e-3
  config.zo.n_samples = arg.n
  config.model = ml_collections.ConfigDict(dict(
      name="llama", vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))

  if arg.runlocal:
    config.num_steps = 3
    config.batch_size = 8
    config.seq_len = 32
    config.eval_batch_size = 8
    config.eval_every = 0
    config.log_every = 1
    config.checkpoint_every = 2
    config.optim.warmup_steps = 1
    config.data.max_bytes = 100_000
    config.model.update(dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=32))
  return config
