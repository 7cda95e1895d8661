"""FT-L: one kernel trained under the elementwise constraint, EasyEdit's minibatch loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams import tree as jtree
from jaxparams.edit import evaluate, facts, ft, requests
from jaxparams.models import Llama, LlamaConfig

PATH = "layers_0/mlp/down_proj/kernel"


def test_ft_constrained_one_kernel_and_moves_the_target():
  fs = facts.load_facts_set()
  tok = facts.build_tokenizer(fs)
  cfg = LlamaConfig(vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2)
  m = Llama(cfg)
  p = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  reqs = requests.requests_from_edits(fs)[:3]   # 3 requests, minibatches of 2: one padded row
  hp = ft.FTParams(num_steps=5, lr=1e-2, norm_constraint=2e-3, batch_size=2)
  new, d = ft.finetune(m, p, tok, reqs, where=PATH, hp=hp)
  assert list(d.updates) == [PATH]
  upd = np.asarray(d.updates[PATH])
  assert 0 < np.abs(upd).max() <= hp.norm_constraint + 1e-7
  before, after = jtree.flatten(p), jtree.flatten(new)
  for k, v in before.items():
    if k != PATH:
      np.testing.assert_array_equal(np.asarray(after[k]), np.asarray(v))
  prompts = [r.prompt.replace("{}", r.subject) for r in reqs]
  lp0 = evaluate.target_logprobs(m, p, tok, prompts, [r.target_new for r in reqs])
  lp1 = evaluate.target_logprobs(m, new, tok, prompts, [r.target_new for r in reqs])
  assert float(jnp.min(lp1 - lp0)) > 0
  with pytest.raises(ValueError, match="batch_size"):
    ft.FTParams(batch_size=0)
