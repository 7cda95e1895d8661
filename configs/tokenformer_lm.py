r"""TokenFormer byte-level LM on the Python standard library's source, grown mid-training.

The model starts with ``qkv/out_tokens`` and ``ffn_tokens`` parameter tokens per Pattention layer;
at ``growth.steps`` `jaxparams.scale.tokenformer.grow` appends zero-key tokens (function
preserving: the JSONL records the eval loss just before and after) and training continues.

  python -m jaxparams.train --config=configs/tokenformer_lm.py --workdir=/tmp/tokenformer_lm
  python -m jaxparams.train --config=configs/tokenformer_lm.py:runlocal --workdir=/tmp/tf_local \
      --config.num_steps=10

Arguments (``:arg``): ``runlocal`` (seconds on one CPU), ``grow=0`` (no growth: the
train-from-scratch baseline), ``scale=N`` (multiplies every token count, e.g. the large model).
"""

import ml_collections

from jaxparams.train import config_args, trainer


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, runlocal=False, grow=True, scale=1)
  config = trainer.default_config()
  config.num_steps = 4000
  config.batch_size = 64
  config.seq_len = 256
  config.eval_batch_size = 64
  config.eval_every = 200
  config.log_every = 20
  config.checkpoint_every = 1000
  config.optim.lr = 2e-3
  config.optim.warmup_steps = 200
  s = arg.scale
  config.model = ml_collections.ConfigDict(dict(
      name="tokenformer", vocab_size=256, d_model=256, n_layers=4, n_heads=8,
      qkv_tokens=128 * s, out_tokens=128 * s, ffn_tokens=512 * s, max_len=256))
  config.growth.hook = "tokenformer_grow"
  config.growth.steps = (2000,) if arg.grow else ()
  config.growth.kwargs = ml_collections.ConfigDict(dict(
      n_new_tokens=ml_collections.ConfigDict(dict(qkv=128 * s, out=128 * s, ffn=512 * s))))

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
    config.model.update(dict(d_model=32, n_layers=1, n_heads=2, qkv_tokens=8 * s,
                             out_tokens=8 * s, ffn_tokens=16 * s, max_len=32))
    config.growth.steps = (2,) if arg.grow else ()
    config.growth.kwargs.n_new_tokens.update(dict(qkv=8 * s, out=8 * s, ffn=16 * s))
  return config
