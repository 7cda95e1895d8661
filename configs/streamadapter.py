r"""StreamAdapter (arXiv 2411.09289): in-context demonstrations absorbed into a weight update.

A small Llama first learns a family of in-context tasks (each task a random mapping of 8 input
symbols to 16 output symbols, shown as demonstration pairs, one token per pair); then only the StreamAdapter modules
(learnable queries over chunks of the demonstrations' key/value states, a gated chunk recurrence,
low-rank absorption into ``o_proj`` and ``down_proj``) train, the base frozen, across many tasks;
finally zero-shot, ICL, StreamAdapter and LoRA test-time training are compared on held-out tasks
for k = 1..32 demonstrations (``WORKDIR/results.json``). Data-parallel over all devices.

  python -m jaxparams.train --config=configs/streamadapter.py --workdir=/tmp/streamadapter
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    python -m jaxparams.train --config=configs/streamadapter.py:runlocal --workdir=/tmp/sa_local

Arguments (``:arg``): ``runlocal`` (seconds on one CPU), ``quick`` (the benchmark's ``--quick``:
a tiny model, minutes), ``tasks=N`` (size of the adapter's training-task pool, 0 = fresh tasks
every step), ``queries=M`` (learnable queries = rank of the update), ``adapter_steps=N`` (override
the adapter's training steps).
"""

import ml_collections

from jaxparams.train import config_args


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, runlocal=False, quick=False, tasks=0, queries=16,
                              adapter_steps=0)
  c = ml_collections.ConfigDict()
  c.entry = "jaxparams.adapt.streamadapter.pipeline:run"
  c.task = ml_collections.ConfigDict(dict(n_in=8, n_out=16, format="pair_tokens"))
  c.model = ml_collections.ConfigDict(dict(
      hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=4, max_position_embeddings=128))
  c.base = ml_collections.ConfigDict(dict(steps=2000, batch_size=64, lr=3e-3, warmup_steps=100,
                                          max_k=32))
  c.adapter = ml_collections.ConfigDict(dict(steps=3000, batch_size=32, lr=3e-3, warmup_steps=50,
                                             max_k=32, n_train_tasks=int(arg.tasks)))
  c.streamadapter = ml_collections.ConfigDict(dict(
      num_queries=int(arg.queries), state_dim=64, chunk_size=16,
      targets=("**/attn/o_proj/kernel", "**/mlp/down_proj/kernel")))
  c.lora = ml_collections.ConfigDict(dict(rank=8, steps=50, lr=1e-2))
  c.eval = ml_collections.ConfigDict(dict(ks=(1, 2, 4, 8, 16, 32), n_tasks=256))
  if arg.quick:
    c.model.update(dict(hidden_size=32, intermediate_size=64))
    c.base.update(dict(steps=800))
    c.adapter.update(dict(steps=1200))
    c.streamadapter.update(dict(state_dim=32))
    c.eval.n_tasks = 128
  if arg.adapter_steps:
    c.adapter.steps = int(arg.adapter_steps)
  if arg.runlocal:
    c.model.update(dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                        num_key_value_heads=1))
    c.base.update(dict(steps=3, batch_size=8, max_k=4))
    c.adapter.update(dict(steps=2, batch_size=8, max_k=4))
    c.streamadapter.update(dict(num_queries=4, state_dim=8, chunk_size=4))
    c.lora.update(dict(rank=2, steps=2))
    c.eval.update(dict(ks=(1, 2), n_tasks=8))
  return c
