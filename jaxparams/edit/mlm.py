"""Token rows of a masked LM (BERT with its MLM head) for locate-then-edit.

Cloze rows ``[CLS] prompt [MASK]... [SEP]`` (one ``[MASK]`` per target token; ``<s>`` in a
template stands for ``[SEP]``), context templates sampled at a trailing ``[MASK]``, and the
target log-probabilities at the masks: the masked-LM counterparts of
:mod:`jaxparams.edit.requests` and :mod:`jaxparams.edit.evaluate`. Below the requests and the
targets (which dispatch here for a masked model); :mod:`jaxparams.edit.arch` re-exports it.

Example:
  >>> from jaxparams.edit import facts_mlm
  >>> tok = facts_mlm.build_tokenizer(facts_mlm.facts_lib.load_facts_set())
  >>> ids, lookup, pos, labels = encode_request_mlm(tok, _Cloze('{} plays the', 'Jorah Wexgrave',
  ...                                                          'harp'), '{}')
  >>> tok.id_to_token(ids[0]), tok.id_to_token(ids[pos[0]]), lookup, len(labels)
  ('[CLS]', '[MASK]', 2, 1)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.edit import facts as facts_lib
from jaxparams.edit.sites import CLS, MASK, PAD, SEP, UNK

__all__ = ["encode_text_mlm", "encode_request_mlm", "encode_rows_mlm", "context_templates_mlm",
           "mlm_target_logprobs", "need_head", "special"]


class _Cloze(NamedTuple):
  prompt: str
  subject: str
  target_new: str


def need_head(module: Any) -> None:
  if not getattr(module.config, "mlm_head", False):
    raise ValueError("editing targets on a BERT need its masked-LM head: load a BertForMaskedLM "
                     "checkpoint (BertConfig(mlm_head=True)); a BertModel without a head only "
                     "gives keys and statistics")


def special(tokenizer: Any, token: str) -> int:
  i = tokenizer.token_to_id(token)
  if i is None:
    raise ValueError(f"the tokenizer has no {token} token (a masked-LM tokenizer needs "
                     f"{CLS}, {SEP} and {MASK})")
  return int(i)


def encode_text_mlm(tokenizer: Any, text: str, *, what: str = "text") -> list[int]:
  """Token ids of ``text`` (no special tokens added; ``<s>`` in the text is ``[SEP]``);
  ValueError on words the tokenizer maps to ``[UNK]``."""
  out: list[int] = []
  for j, part in enumerate(text.split(facts_lib.BOS)):
    if j:
      out.append(special(tokenizer, SEP))
    if part.strip():
      enc = tokenizer.encode(part.strip(), add_special_tokens=False)
      unk = tokenizer.token_to_id(UNK)
      if unk is not None and unk in enc.ids:
        bad = [t for t, i in zip(enc.tokens, enc.ids) if i == unk]
        raise ValueError(f"{what} {part.strip()!r}: the tokenizer cannot encode word(s) {bad}")
      out.extend(enc.ids)
  return out


def encode_request_mlm(tokenizer: Any, req: Any, template: str, *, n_mask: int | None = None,
                       fact_token: str = "subject_last"
                       ) -> tuple[list[int], int, list[int], list[int]]:
  """Row ``[CLS] template(prompt(subject)) [MASK]*n [SEP]``, the key position (subject's last
  token, or the prompt's last token for ``fact_token='last'``), the mask positions and their
  labels (the target's tokens; ``n_mask`` masks without labels for a KL prompt)."""
  if fact_token not in ("subject_last", "last"):
    raise ValueError(f"fact_token must be 'subject_last' or 'last', found {fact_token!r}")
  full = template.replace("{}", req.prompt)
  pre, post = full.split("{}")
  head = [special(tokenizer, CLS)] + encode_text_mlm(tokenizer, f"{pre} {req.subject}",
                                                      what="prompt")
  lookup = len(head) - 1
  ids = head + encode_text_mlm(tokenizer, post, what="prompt")
  if fact_token == "last":
    lookup = len(ids) - 1
  labels = (encode_text_mlm(tokenizer, req.target_new, what="target") if n_mask is None
            else [-1] * n_mask)
  pos = list(range(len(ids), len(ids) + len(labels)))
  ids = ids + [special(tokenizer, MASK)] * len(labels) + [special(tokenizer, SEP)]
  return ids, lookup, pos, labels


def encode_rows_mlm(tokenizer: Any, requests: Sequence[Any], templates: Sequence[str],
                    kl_prompts: Sequence[str], fact_token: str = "subject_last") -> dict[str, Any]:
  """The arrays of :func:`jaxparams.edit.targets.encode_batch_mlm` (a masked LM's
  :class:`~jaxparams.edit.targets.Batch`): ``labels`` hold the target token at each ``[MASK]``
  (``tmask`` marks them) and ``kl_pos`` the mask of the KL prompts."""
  rows_all, look_all, pos_all, lab_all, klp_all = [], [], [], [], []
  n_target = []
  for r in requests:
    rows, look, poss, labs, klp = [], [], [], [], []
    for tpl in templates:
      ids, lk, pos, lab = encode_request_mlm(tokenizer, r, tpl, fact_token=fact_token)
      rows.append(ids), look.append(lk), poss.append(pos), labs.append(lab), klp.append(pos[0])
    for kp in kl_prompts:
      kr = _Cloze(kp, r.subject, r.target_new)
      ids, lk, pos, _ = encode_request_mlm(tokenizer, kr, "{}", n_mask=1, fact_token=fact_token)
      rows.append(ids), look.append(lk), poss.append([]), labs.append([]), klp.append(pos[0])
    n_target.append(len(encode_text_mlm(tokenizer, r.target_new, what="target")))
    rows_all.append(rows), look_all.append(look), pos_all.append(poss), lab_all.append(labs)
    klp_all.append(klp)
  t = max(len(x) for rows in rows_all for x in rows)
  t = -(-t // 8) * 8
  n, m = len(rows_all), len(rows_all[0])
  ids = np.zeros((n, m, t), np.int32)
  mask = np.zeros((n, m, t), np.int32)
  tmask = np.zeros((n, m, t), np.float32)
  labels = np.zeros((n, m, t), np.int32)
  for i in range(n):
    for j in range(m):
      row = rows_all[i][j]
      ids[i, j, :len(row)] = row
      mask[i, j, :len(row)] = 1
      for p, lab in zip(pos_all[i][j], lab_all[i][j]):
        tmask[i, j, p] = 1.0
        labels[i, j, p] = lab
  is_kl = np.zeros((n, m), bool)
  if kl_prompts:
    is_kl[:, -len(kl_prompts):] = True
  return dict(ids=ids, mask=mask, tmask=tmask, lookup=np.asarray(look_all, np.int32),
              is_kl=is_kl, n_target=np.asarray(n_target, np.float32), labels=labels,
              kl_pos=np.asarray(klp_all, np.int32))


@functools.partial(jax.jit, static_argnums=0)
def _mask_logits(module, params, ids, mask, pos):
  logits = module.apply({"params": params}, ids, attention_mask=mask)
  return jnp.take_along_axis(logits, pos[:, None, None], 1)[:, 0].astype(jnp.float32)


def context_templates_mlm(module: Any, params: Any, tokenizer: Any, *,
                          length_params: Sequence[tuple[int, int]] = ((5, 10), (10, 10)),
                          seed: int = 0) -> list[str]:
  """``["{}"]`` plus prefixes sampled from the masked LM left to right (each word drawn at a
  trailing ``[MASK]``: ``[CLS] w_1 .. w_i [MASK] [SEP]``), each followed by ``<s> {}`` (a
  ``[SEP]``): ROME's ``context_template_length_params`` for a masked LM."""
  need_head(module)
  cls, sep, msk = (special(tokenizer, t) for t in (CLS, SEP, MASK))
  skip = {tokenizer.token_to_id(t) for t in (CLS, SEP, MASK, PAD, UNK)} - {None}
  out = ["{}"]
  key = jax.random.key(seed)
  for length, n in length_params:
    words = np.zeros((n, 0), np.int32)
    for i in range(length):
      ids = np.concatenate([np.full((n, 1), cls, np.int32), words,
                            np.full((n, 1), msk, np.int32), np.full((n, 1), sep, np.int32)], 1)
      logits = _mask_logits(module, params, jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)),
                            jnp.full((n,), i + 1, jnp.int32))
      logits = logits.at[:, jnp.asarray(sorted(skip), jnp.int32)].set(-jnp.inf)
      logits = logits.at[:, tokenizer.get_vocab_size():].set(-jnp.inf)  # padded vocabulary
      key, sub = jax.random.split(key)
      nxt = np.asarray(jax.random.categorical(sub, logits), np.int32)[:, None]
      words = np.concatenate([words, nxt], 1)
    for row in words:
      out.append(" ".join(tokenizer.id_to_token(int(i)) for i in row) + " <s> {}")
  return out


@functools.partial(jax.jit, static_argnums=0)
def _masked_logprob(module, params, ids, mask, tmask, labels):
  logits = module.apply({"params": params}, ids, attention_mask=mask).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, -1)
  tok = jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
  return (tok * tmask).sum(-1)


def mlm_target_logprobs(module: Any, params: Any, tokenizer: Any, prompts: Sequence[str],
                        targets: Sequence[str], *, batch_size: int = 512) -> jax.Array:
  """``log P(target | [CLS] prompt [MASK]*len(target) [SEP])``: the sum over the target's
  tokens, each at its mask, ``float32[n]`` (the masked-LM counterpart of
  :func:`jaxparams.edit.evaluate.target_logprobs`)."""
  rows, poss, labs = [], [], []
  for p, t in zip(prompts, targets, strict=True):
    ids, _, pos, lab = encode_request_mlm(tokenizer, _Cloze("{}", p, t), "{}")
    rows.append(ids), poss.append(pos), labs.append(lab)
  t = -(-max(len(r) for r in rows) // 8) * 8
  ids = np.zeros((len(rows), t), np.int32)
  mask, tmask, labels = np.zeros_like(ids), np.zeros(ids.shape, np.float32), np.zeros_like(ids)
  for i, (r, pos, lab) in enumerate(zip(rows, poss, labs)):
    ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
    tmask[i, pos] = 1.0
    labels[i, pos] = lab
  out = []
  for s in range(0, len(ids), batch_size):
    sl = slice(s, s + batch_size)
    out.append(_masked_logprob(module, params, *(jnp.asarray(a[sl]) for a in
                                                 (ids, mask, tmask, labels))))
  return jnp.concatenate(out)
