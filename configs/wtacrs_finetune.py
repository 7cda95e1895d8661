r"""Llama byte-level LM trained with WTA-CRS backward: sampled weight gradients, exact forward.

``backward.name='wtacrs'``: every Linear keeps only ``backward.ratio`` of its input rows for the
backward pass (winner-take-all column-row sampling, :mod:`jaxparams.train.wtacrs`); the forward
pass and the input gradients are exact, the weight gradients unbiased estimates.

  python -m jaxparams.train --config=configs/wtacrs_finetune.py --workdir=/tmp/wtacrs
  python -m jaxparams.train --config=configs/wtacrs_finetune.py:runlocal --workdir=/tmp/wta_local

Arguments (``:arg``): ``runlocal`` (seconds on one CPU), ``ratio=R`` (kept rows, default 0.3),
``exact`` (exact backward: the baseline).
"""

import ml_collections

from jaxparams.train import config_args, trainer


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, runlocal=False, ratio=0.3, exact=False)
  config = trainer.default_config()
  config.num_steps = 2000
  config.batch_size = 32
  config.seq_len = 128
  config.eval_batch_size = 32
  config.eval_every = 100
  config.log_every = 20
  config.checkpoint_every = 500
  config.optim.lr = 2e-3
  config.optim.warmup_steps = 100
  config.backward.name = "exact" if arg.exact else "wtacrs"
  config.backward.ratio = arg.ratio
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
