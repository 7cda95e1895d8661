r"""Llama byte-level LM on the Python standard library's source, FFN widened by Net2Net mid-run.

At ``growth.steps`` `jaxparams.scale.net2net.widen_llama_ffn` widens every SwiGLU FFN from
``intermediate_size`` to ``growth.kwargs.new_intermediate_size`` (function preserving: the JSONL
records the eval loss just before and after); Adam moments of the old units are kept, the new
units start with zero moments (``growth.opt_state='pad'``).

  python -m jaxparams.train --config=configs/llama_net2net.py --workdir=/tmp/llama_net2net
  python -m jaxparams.train --config=configs/llama_net2net.py:runlocal --workdir=/tmp/ll_local

Arguments (``:arg``): ``runlocal`` (seconds on one CPU), ``grow=0`` (no widening).
"""

import ml_collections

from jaxparams.train import config_args, trainer


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, runlocal=False, grow=True)
  config = trainer.default_config()
  config.num_steps = 4000
  config.batch_size = 64
  config.seq_len = 256
  config.eval_batch_size = 64
  config.eval_every = 200
  config.log_every = 20
  config.checkpoint_every = 1000
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  config.model = ml_collections.ConfigDict(dict(
      name="llama", vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256))
  config.growth.hook = "llama_widen_ffn"
  config.growth.steps = (2000,) if arg.grow else ()
  config.growth.kwargs = ml_collections.ConfigDict(dict(new_intermediate_size=1024, noise=0.0))

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
    config.growth.steps = (2,) if arg.grow else ()
    config.growth.kwargs.new_intermediate_size = 64
  return config
