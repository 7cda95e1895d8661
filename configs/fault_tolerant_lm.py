r"""TokenFormer byte-level LM with in-memory snapshots (XOR parity over 4 nodes) and a failure.

Every ``snapshot.every`` steps params, optimizer state and PRNG key are copied to host memory
asynchronously and erasure-coded over ``snapshot.nodes`` data-parallel nodes
(:mod:`jaxparams.train.snapshot`); orbax checkpoints to disk remain the slow tier
(``checkpoint_every``). ``snapshot.fail_at`` simulates losing node ``snapshot.lose_node`` after
that step: its piece is rebuilt from the parity, training resumes from the snapshot, and the run
ends bit-identical to one without the failure (``fail=0``).

  python -m jaxparams.train --config=configs/fault_tolerant_lm.py --workdir=/tmp/ft
  python -m jaxparams.train --config=configs/fault_tolerant_lm.py:runlocal --workdir=/tmp/ft_local

Arguments (``:arg``): ``runlocal`` (seconds on one CPU), ``every=K`` (snapshot interval),
``fail=0`` (no simulated failure).
"""

import ml_collections

from jaxparams.train import config_args, trainer


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, runlocal=False, every=10, fail=True)
  config = trainer.default_config()
  config.num_steps = 2000
  config.batch_size = 64
  config.seq_len = 256
  config.eval_batch_size = 64
  config.eval_every = 200
  config.log_every = 20
  config.checkpoint_every = 1000
  config.optim.lr = 2e-3
  config.optim.warmup_steps = 200
  config.model = ml_collections.ConfigDict(dict(
      name="tokenformer", vocab_size=256, d_model=256, n_layers=4, n_heads=8,
      qkv_tokens=128, out_tokens=128, ffn_tokens=512, max_len=256))
  config.snapshot.every = arg.every
  config.snapshot.nodes = 4
  config.snapshot.fail_at = 1005 if arg.fail else 0
  config.snapshot.lose_node = 1

  if arg.runlocal:
    config.num_steps = 3
    config.batch_size = 8
    config.seq_len = 32
    config.eval_batch_size = 8
    config.eval_every = 0
    config.log_every = 1
    config.checkpoint_every = 100
    config.optim.warmup_steps = 1
    config.data.max_bytes = 100_000
    config.model.update(dict(d_model=32, n_layers=1, n_heads=2, qkv_tokens=8, out_tokens=8,
                             ffn_tokens=16, max_len=32))
    config.snapshot.every = 2
    config.snapshot.fail_at = 3 if arg.fail else 0
  return config
