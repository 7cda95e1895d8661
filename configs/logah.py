r"""LoGAH: a graph hypernetwork with a low-rank decoder, trained on a GPTS-1K-style dataset.

Samples ``archs.n`` small decoders (Llama-style and GPT-2-shaped; depth, width, heads, FFN drawn,
``jaxparams.predict.sample_configs``), trains the hypernetwork on the byte-level prose corpus with
their LM loss (AdamW 3e-4, wd 1e-2, warm-up + cosine, clip 5: the LoGAH README), and writes
``WORKDIR/hypernet`` for ``jaxparams.predict.load`` / ``jaxparams.predict.params``.

  python -m jaxparams.train --config=configs/logah.py --workdir=/tmp/logah
  python -m jaxparams.train --config=configs/logah.py:runlocal --workdir=/tmp/logah_local
  python -m jaxparams.train --config=configs/logah.py:decoder=tiled --workdir=/tmp/ghn3_tiled

Arguments (``:arg``): ``runlocal`` (seconds on one CPU), ``decoder=logah|tiled`` (the GHN-3
tiled baseline), ``rank=N`` (LoGAH's r).
"""

import ml_collections

from jaxparams.train.config_args import parse_arg


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, decoder="logah", rank=8)
  c = ml_collections.ConfigDict()
  c.task = "hypernet"
  c.seed = 0
  c.archs = ml_collections.ConfigDict(dict(n=300, seed=1, depth=(1, 3), width=(8, 32)))
  c.hypernet = ml_collections.ConfigDict(dict(
      decoder=arg.decoder, hid=32, layers=3, heads=4, rank=arg.rank, max_width=512, tile=32))
  c.fit = ml_collections.ConfigDict(dict(
      steps=1200, batch_size=8, seq_len=64, lr=3e-4, weight_decay=1e-2, warmup=60, grad_clip=5.0,
      archs_per_step=1, log_every=50))
  if arg.runlocal:
    c.archs.update(dict(n=2, depth=(1, 1), width=(8, 8)))
    c.hypernet.update(dict(hid=16, layers=1, heads=2, rank=min(arg.rank, 4), max_width=256,
                           tile=16))
    c.fit.update(dict(steps=3, batch_size=2, seq_len=16, warmup=1, log_every=1))
  return c
