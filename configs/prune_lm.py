r"""Llama byte-level LM pruned during training to 80% sparsity (gradual magnitude pruning).

Every Linear weight except the embedding and the head is pruned by magnitude on Zhu & Gupta's
polynomial schedule from ``pruning.begin_step`` to ``pruning.end_step`` (masks recomputed every
``pruning.update_freq`` steps, kept in the optimizer state by `jaxparams.prune.wrap_optax`; pruned
weights are zero after every update). ``:dense`` trains the same model without pruning, the
baseline for the loss comparison in benchmarks/RESULTS.md.

  python -m jaxparams.train --config=configs/prune_lm.py --workdir=/tmp/prune_lm
  python -m jaxparams.train --config=configs/prune_lm.py:dense --workdir=/tmp/prune_lm_dense
  python -m jaxparams.train --config=configs/prune_lm.py:runlocal --workdir=/tmp/prune_local

Arguments (``:arg``): ``runlocal`` (seconds on one CPU), ``dense`` (no pruning),
``sparsity=0.8``, ``distribution=uniform|erk``, ``gg_nu=1.0`` (GG initialisation of every matrix,
variance-matched to the model's own init; 0 = the model's init), e.g. ``:dense,gg_nu=1.0`` for the
GG-init comparison.
"""

import ml_collections

from jaxparams.train import config_args, trainer


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, runlocal=False, dense=False, sparsity=0.8,
                              distribution="uniform", gg_nu=0.0)
  config = trainer.default_config()
  config.num_steps = 2000
  config.batch_size = 32
  config.seq_len = 128
  config.eval_batch_size = 32
  config.eval_every = 100
  config.log_every = 20
  config.checkpoint_every = 500
  config.optim.lr = 1e-3
  config.init.gg_nu = arg.gg_nu
  config.optim.warmup_steps = 100
  config.model = ml_collections.ConfigDict(dict(
      name="llama", vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
  if not arg.dense:
    config.pruning.update(dict(sparsity=arg.sparsity, begin_step=100, end_step=1200,
                               update_freq=50, distribution=arg.distribution))

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
    config.model.update(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=32))
    if not arg.dense:
      config.pruning.update(dict(begin_step=0, end_step=2, update_freq=1))
  return config
