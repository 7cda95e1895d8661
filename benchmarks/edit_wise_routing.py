"""Why WISE-Retrieve loses locality on a facts LM: routing rates and distances against its margins.

  python benchmarks/edit_wise_routing.py LM_DIR [N_EDITS] [SAVE_FREQ]

N edits (default 50) with WiseParams(retrieve=True, in_scope="target") at layer 3, shards of
SAVE_FREQ (default 25) merged in pairs; prints the memories, the in-scope distance against the
beta margin, and the share of edit and unrelated prompts routed at the last token. Writes
nothing."""
import sys

import jax.numpy as jnp
import numpy as np

from jaxparams.edit import facts_lm, facts, wise, evaluate, probe
from jaxparams.edit import requests as R
from jaxparams.models import Llama
lm = facts_lm.load_facts_lm(sys.argv[1] + '/hf', sys.argv[1] + '/data')
n = int(sys.argv[2]) if len(sys.argv) > 2 else 50
save = int(sys.argv[3]) if len(sys.argv) > 3 else 25
layer = 3
fs = lm.facts
m = Llama(lm.config, dot=wise.dot)
tpl = tuple(R.context_templates(lm.module, lm.params, lm.tokenizer)[:11])
reqs = R.requests_from_edits(fs)[:n]
pool = [(f.subject, facts.sentence(fs.relations[f.relation][0], f.subject)) for f in fs.facts]
hp = wise.WiseParams(save_freq=save, merge_freq=2 * save, retrieve=True, in_scope='target')
params, st = wise.wrap_params(lm.params, layer), wise.WiseState()
acts = []
for i, r in enumerate(reqs):
  j = (i * 7919) % len(pool)
  while pool[j][0] == r.subject: j = (j + 1) % len(pool)
  params, st, info = wise.wise_edit(m, params, lm.tokenizer, r, layer=layer, loc_prompt=pool[j][1], state=st, templates=tpl, hp=hp)
  acts.append(info['act'])
k = probe.get_kernel(params, layer)
print('memories', k.n_mem, 'thresholds', np.round(np.asarray(k.mem_thr[:k.n_mem]), 2))
print('in-scope distance at the answer positions: median %.2f (beta margin %.0f)' % (np.median(acts), hp.act_margin[1]))
def route_stats(prompts):
  ids, mask = evaluate.encode_prompts(lm.tokenizer, prompts)
  x = probe.run(lm.module, lm.params, jnp.asarray(ids), jnp.asarray(mask), keys=(layer,)).keys[layer]
  last = mask.sum(1) - 1
  xl = x[jnp.arange(len(prompts)), last]
  y0 = xl @ k.w
  dm = jnp.stack([wise._dist(k.act, xl @ k.mem[i], y0) for i in range(k.n_mem)], -1)
  fired = dm > k.mem_thr[:k.n_mem]
  return np.asarray(dm), np.asarray(fired)
edited = {r.subject for r in reqs}
unrel = [p for s, p in pool if s not in edited][::7][:300]
dmu, fu = route_stats(unrel)
eprom = [r.prompt.replace('{}', r.subject) for r in reqs]
dme, fe = route_stats(eprom)
own = np.arange(n) // save
print('edit prompts routed to their own memory at the last prompt token: %.3f; to any memory: %.3f' % (np.mean(fe[np.arange(n), np.minimum(own, k.n_mem-1)]), fe.any(1).mean()))
print('unrelated prompts routed to some memory at the last token: %.3f' % fu.any(1).mean())
print('distance at the last token: edit prompts, own memory median %.2f; unrelated, max over memories median %.2f (alpha margin %.0f)' % (np.median(dme[np.arange(n), np.minimum(own, k.n_mem-1)]), np.median(dmu.max(1)), hp.act_margin[0]))
