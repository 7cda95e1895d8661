r"""Small Llama that memorises a facts set (word-level tokenizer), the model the editing benchmark
edits. Corpus: every fact of ``facts.jsonl`` in every phrasing of ``relations.json``, plus
profile lines (``<s> subject`` and the subject's objects in a random order) that make the model
store a subject's facts at the subject's last token, where ROME/MEMIT edit; AdamW weight decay
0.1.

  python -m jaxparams.train --config=configs/facts_lm.py --workdir=/tmp/facts_lm
  python -m jaxparams.train --config=configs/facts_lm.py:data=DIR,size=tiny --workdir=/tmp/f

Arguments (``:arg``): ``data=DIR`` (a folder with ``facts.jsonl`` and ``relations.json``;
default: the set packaged in ``jaxparams/edit/data``), ``size=default|wide|tiny`` (``wide``: d_ff
512, 3000 steps, for the 1000-edit set of ``benchmarks/make_facts_set.py --subjects 1300
--relations-per-subject 2 --edits 1000 --distinct-subjects``), ``steps=N``,
``runlocal`` (= ``size=tiny,steps=3``). To export the HF checkpoint (config, safetensors,
tokenizer.json) use ``jaxparams.train.facts_lm.train_facts_lm(workdir)``, which runs this same
config through the trainer (reusing a finished run) and calls ``jp.models.to_hf``.
"""

import ml_collections

from jaxparams.train import facts_lm
from jaxparams.train import config_args


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = config_args.parse_arg(arg, runlocal=False, data="", size="default", steps=0)
  if arg.runlocal:
    config = facts_lm.facts_lm_config(arg.data, size="tiny", steps=3)
    config.plot = True
    return config
  return facts_lm.facts_lm_config(arg.data, size=arg.size, steps=arg.steps)
