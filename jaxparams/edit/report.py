"""Before/after scores of an edit: P(target) and P(old answer) on the prompt and a paraphrase.

:func:`before_after` scores each request on two models (before and after the edit) with
:func:`jaxparams.edit.evaluate.target_logprobs` (``<s> prompt target``, teacher forcing, the
probability of a multi-token answer is the product over its tokens). The *old answer* is what the
unedited model says: greedy decoding after the prompt, as many tokens as the new target has
(:func:`old_answers`), unless given. A paraphrase is a template with ``{}`` for the subject; the
edit generalises when the paraphrase follows the new target too. Causal LMs only.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models import Llama, LlamaConfig
  >>> from jaxparams.edit import facts, requests
  >>> fs = facts.load_facts_set(); tok = facts.build_tokenizer(fs)
  >>> m = Llama(LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=16,
  ...                       intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
  >>> p = m.init(jax.random.key(0), jnp.zeros((1, 2), int))['params']
  >>> r = requests.EditRequest('{} plays the', 'Jorah Wexgrave', 'harp')
  >>> rows = before_after(m, p, p, tok, [r], paraphrases=['The instrument of {} is the'])
  >>> [row.kind for row in rows], rows[0].p_new_before == rows[0].p_new_after
  (['prompt', 'paraphrase'], True)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from jaxparams.edit import evaluate
from jaxparams.edit import facts as facts_lib
from jaxparams.edit import requests as req_lib

__all__ = ["ScoreRow", "before_after", "old_answers", "format_rows"]


@dataclasses.dataclass(frozen=True)
class ScoreRow:
  """One prompt of one request: probabilities of the new target and of the old answer."""
  request: int
  kind: str  # 'prompt' or 'paraphrase'
  text: str
  target_new: str
  old: str
  p_new_before: float
  p_new_after: float
  p_old_before: float
  p_old_after: float


def old_answers(module: Any, params: Any, tokenizer: Any,
                requests: Sequence[req_lib.EditRequest]) -> list[str]:
  """The unedited model's greedy answer after each prompt (as many tokens as ``target_new``)."""
  out = []
  for r in requests:
    prompt = facts_lib.sentence(r.prompt, r.subject)
    n = max(1, len(facts_lib.encode_words(tokenizer, r.target_new, what="target")))
    ids: list[int] = []
    for _ in range(n):
      text = prompt if not ids else f"{prompt} {tokenizer.decode(ids)}"
      logits = evaluate.next_logits(module, params, evaluate.encode_prompts(tokenizer, [text]))
      ids.append(int(jnp.argmax(logits[0])))
    out.append(tokenizer.decode(ids).strip())
  return out


def before_after(module: Any, before: Any, after: Any, tokenizer: Any,
                 requests: Sequence[req_lib.EditRequest], *,
                 paraphrases: Sequence[str | None] | None = None,
                 old: Sequence[str] | None = None) -> list[ScoreRow]:
  """Scores every request's prompt (and its paraphrase, when given) before and after.

  Args:
    module: The causal LM (a Flax module).
    before, after: Its params before and after the edit.
    tokenizer: The tokenizer.
    requests: The edit requests.
    paraphrases: One template (``{}`` = subject) per request, or None; or None for none.
    old: The old answer per request (default: each request's ``ground_truth``, else
      :func:`old_answers` of ``before``).

  Raises:
    ValueError: a paraphrase without ``{}``, or one per request missing.
  """
  requests = list(requests)
  paraphrases = list(paraphrases) if paraphrases is not None else [None] * len(requests)
  if len(paraphrases) != len(requests):
    raise ValueError(f"{len(paraphrases)} paraphrase(s) for {len(requests)} request(s)")
  if old is None:
    missing = [r for r in requests if not r.ground_truth]
    answers = iter(old_answers(module, before, tokenizer, missing) if missing else ())
    old = [r.ground_truth or next(answers) for r in requests]
  old = list(old)
  items = []
  for i, (r, para, o) in enumerate(zip(requests, paraphrases, old)):
    items.append((i, "prompt", facts_lib.sentence(r.prompt, r.subject), r.target_new, o))
    if para:
      if para.count("{}") != 1:
        raise ValueError(f"paraphrase {para!r} must contain '{{}}' (the subject) exactly once")
      items.append((i, "paraphrase", facts_lib.sentence(para, r.subject), r.target_new, o))
  texts = [t for _, _, t, _, _ in items]
  news = [n for _, _, _, n, _ in items]
  olds = [o for _, _, _, _, o in items]
  probs = {}
  for name, params in (("before", before), ("after", after)):
    lp = evaluate.target_logprobs(module, params, tokenizer, texts + texts, news + olds)
    probs[name] = np.exp(np.asarray(lp, np.float64))
  n = len(items)
  return [ScoreRow(i, kind, text, new, o, float(probs["before"][j]), float(probs["after"][j]),
                   float(probs["before"][n + j]), float(probs["after"][n + j]))
          for j, (i, kind, text, new, o) in enumerate(items)]


def format_rows(rows: Sequence[ScoreRow], *, width: int = 44) -> str:
  """A plain-text table of :func:`before_after` rows (one block per request)."""
  head = (f"{'':14}{'prompt':{width}}  {'P(new) before -> after':<24}  "
          f"{'P(old) before -> after':<24}")
  lines = [head]
  last = None
  for r in rows:
    if r.request != last:
      lines.append(f"request {r.request + 1}: new {r.target_new!r}, old {r.old!r}")
      last = r.request
    text = r.text if len(r.text) <= width else r.text[:width - 3] + "..."
    lines.append(f"  {r.kind:12}{text:{width}}  {r.p_new_before:>6.3f} -> {r.p_new_after:<14.3f}"
                 f"  {r.p_old_before:>6.3f} -> {r.p_old_after:.3f}")
  return "\n".join(lines)
