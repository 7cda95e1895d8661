"""A tiny merge example on disk: a base Llama, two fine-tunes and a mergekit recipe.

``jaxparams demo --example DIR`` calls :func:`write_example`, so ``jaxparams merge`` can be tried in
one line on a fresh install (no downloads)::

  jaxparams demo --example ex && jaxparams merge ex/recipe.yml ex/merged

It also writes the editable example of :mod:`jaxparams.demo.facts_example` (``facts-lm/``, a
small facts LM with its tokenizer, ``requests.jsonl`` and ``stats.txt``) for ``jaxparams edit``.

The models are random ``LlamaForCausalLM`` checkpoints (HF safetensors + ``config.json``, loadable
by transformers); each fine-tune is the base plus a small random task vector. The recipe names
them by paths relative to its own folder, so it works from any current directory.

Example:
  >>> import tempfile, os
  >>> d = write_example(os.path.join(tempfile.mkdtemp(), 'ex'))
  >>> sorted(os.listdir(d))  # doctest: +NORMALIZE_WHITESPACE
  ['README.md', 'facts-lm', 'recipe.yml', 'requests.jsonl', 'stats.txt', 'tiny-llama-base',
   'tiny-llama-ft-a', 'tiny-llama-ft-b']
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from jaxparams import models
from jaxparams.demo import facts_example
from jaxparams.io import atomic_dir

__all__ = ["BASE", "FINE_TUNES", "RECIPE", "write_example"]

BASE = "tiny-llama-base"
FINE_TUNES = ("tiny-llama-ft-a", "tiny-llama-ft-b")

RECIPE = f"""\
# TIES merge of two fine-tunes of a tiny Llama (mergekit's format, unchanged).
# Model paths are relative to this file's folder. Try:
#   jaxparams merge recipe.yml merged          (from this folder), or
#   jaxparams merge DIR/recipe.yml DIR/merged  (from anywhere)
merge_method: ties
base_model: {BASE}
models:
  - model: {FINE_TUNES[0]}
    parameters:
      weight: 0.6
      density: 0.5
  - model: {FINE_TUNES[1]}
    parameters:
      weight: 0.4
      density: 0.5
parameters:
  normalize: true
dtype: float32
"""

_README = """\
# jaxparams merge example

`{base}` is a random tiny `LlamaForCausalLM`; `{a}` and `{b}` are the base plus small random
task vectors. `recipe.yml` merges them with TIES. Run `jaxparams merge recipe.yml merged` here,
then `jaxparams inspect merged` or load `merged` with `jaxparams.models.from_hf`.

`facts-lm` is a small Llama that knows {n} invented people's facts (with its `tokenizer.json`);
`requests.jsonl` asks to change one of them and `stats.txt` holds the other people's facts (the
text the key statistics come from). Edit it with ROME and see the probabilities move, on the
prompt and on the request's `rephrase_prompt`:

    jaxparams edit facts-lm requests.jsonl edited --layers 0 --stats-text stats.txt
"""

_CONFIG = models.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@jax.jit
def _fine_tune(params, key):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      w + 0.02 * jax.random.normal(k, w.shape, w.dtype) for w, k in zip(leaves, keys)])


def write_example(out_dir: str | Path, *, seed: int = 0, overwrite: bool = False) -> Path:
  """Writes the base, two fine-tunes, ``recipe.yml`` and a README into ``out_dir`` (atomic).

  Args:
    out_dir: the folder to create.
    seed: seed of the random weights.
    overwrite: replace an existing ``out_dir``.

  Returns:
    ``out_dir`` as a ``Path``.

  Raises:
    FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
  """
  key = jax.random.key(seed)
  ids = jnp.zeros((1, 4), jnp.int32)
  base = models.Llama(_CONFIG).init(key, ids)["params"]
  trees = {BASE: base}
  for i, name in enumerate(FINE_TUNES, 1):
    trees[name] = _fine_tune(base, jax.random.fold_in(key, i))
  with atomic_dir(out_dir, overwrite=overwrite) as tmp:
    for name, params in trees.items():
      models.to_hf(params, _CONFIG, tmp / name)
    (tmp / "recipe.yml").write_text(RECIPE)
    (tmp / "README.md").write_text(_README.format(base=BASE, a=FINE_TUNES[0], b=FINE_TUNES[1],
                                                  n=facts_example.N_SUBJECTS))
    facts_example.write_facts_example(tmp)
  return Path(out_dir)
