"""Edit requests (EasyEdit's form) and their token rows: subject position, target positions.

A request is ``{"prompt": "... {} ...", "subject": ..., "target_new": ...}`` (the prompt holds
``{}`` where the subject goes). Context templates are strings with ``{}`` standing for the
prompt; the text ``<s>`` inside a template or prompt stands for the BOS token.

Example:
  >>> from jaxparams.edit import facts
  >>> tok = facts.build_tokenizer(facts.load_facts_set())
  >>> r = EditRequest(prompt='{} plays the', subject='Jorah Wexgrave', target_new='harp')
  >>> ids, look, tgt = encode_request(tok, r, '{}')
  >>> len(ids), look, tgt, ids[tgt[0] + 1] == tok.token_to_id('harp')
  (6, 2, [4], True)
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import io as jio
from jaxparams.edit import facts as facts_lib
from jaxparams.edit import mlm, sites

__all__ = ["EditRequest", "read_requests", "encode_text", "encode_request", "context_templates",
           "requests_from_edits"]


@dataclasses.dataclass(frozen=True)
class EditRequest:
  """One edit: ``prompt.format(subject)`` should continue with ``target_new``.

  Attributes:
    prompt: Text with ``{}`` (the subject) exactly once.
    subject: The subject.
    target_new: The new object.
    where: Where the request came from (e.g. ``requests.jsonl:3``) for error messages.
    rephrase: A paraphrase of the prompt with ``{}`` exactly once (EasyEdit's
      ``rephrase_prompt``), scored before/after; not used by the edit itself.
    ground_truth: The old answer (EasyEdit's ``ground_truth``), scored before/after.
  """
  prompt: str
  subject: str
  target_new: str
  where: str = ""
  rephrase: str | None = None
  ground_truth: str | None = None

  def check(self, tokenizer: Any | None = None) -> None:
    """Raises ValueError naming the request when it cannot be edited."""
    at = f"{self.where}: " if self.where else ""
    if self.prompt.count("{}") != 1:
      raise ValueError(f"{at}prompt {self.prompt!r} must contain '{{}}' exactly once "
                       "(where the subject goes)")
    if self.rephrase is not None and self.rephrase.count("{}") != 1:
      raise ValueError(f"{at}rephrase_prompt {self.rephrase!r} must contain '{{}}' exactly once "
                       "(where the subject goes)")
    if not self.subject.strip():
      raise ValueError(f"{at}empty subject")
    if not self.target_new.strip():
      raise ValueError(f"{at}empty target_new")
    if tokenizer is not None:
      try:
        encode_text(tokenizer, self.prompt.replace("{}", self.subject))
        if not encode_text(tokenizer, self.target_new):
          raise ValueError(f"target {self.target_new!r} encodes to no tokens")
      except ValueError as e:
        raise ValueError(f"{at}{e}") from None


def _template(text: str, subject: str, where: str, field: str) -> str:
  # A prompt with {} for the subject; the subject written out is replaced by {} (once).
  if "{}" not in text:
    if subject not in text or not subject:
      raise ValueError(f"{where}: subject {subject!r:.200} is not in the {field} {text!r:.200}")
    text = text.replace(subject, "{}", 1)
  return text


def read_requests(path: str | pathlib.Path, tokenizer: Any | None = None) -> list[EditRequest]:
  """Reads EasyEdit-style requests (JSONL, or a JSON list); checks each one.

  ``{"prompt": "The capital of {} is", "subject": "France", "target_new": "Lyon"}``; also
  accepts ``"target_new": {"str": ...}`` (ROME/MEMIT's form) and a prompt with the subject
  written out instead of ``{}`` (it is replaced by ``{}``). EasyEdit's ``rephrase_prompt``
  and ``ground_truth`` (CounterFact's ``target_true``) are kept on the request for scoring.

  The file is read by :func:`jaxparams.io.read_request_rows` (size-bounded, inside its folder,
  UTF-8, every field a string).

  Raises:
    FileNotFoundError: no such file.
    ValueError: naming the file and line of a bad request (invalid JSON, missing key, a field
      of the wrong type, subject not in the prompt, empty target, words the tokenizer cannot
      encode).
  """
  out = []
  for row in jio.read_request_rows(path):  # the strict reader: size, folder, types, lines
    subject, where = row.subject, row.where
    prompt = _template(row.prompt, subject, where, "prompt")
    rephrase = (None if row.rephrase_prompt is None
                else _template(row.rephrase_prompt, subject, where, "rephrase_prompt"))
    req = EditRequest(prompt, subject, row.target_new, where, rephrase=rephrase,
                      ground_truth=row.ground_truth)
    req.check(tokenizer)
    out.append(req)
  return out


def requests_from_edits(fs: facts_lib.FactsSet, edits: Sequence[facts_lib.Edit] | None = None
                        ) -> list[EditRequest]:
  """Requests for edits of a facts set, each on its relation's first (edit) prompt."""
  return [EditRequest(fs.relations[e.relation][0], e.subject, e.target_new)
          for e in (fs.edits if edits is None else edits)]


def encode_text(tokenizer: Any, text: str) -> list[int]:
  """Token ids of ``text`` (no special tokens added; ``<s>`` in the text is the BOS id)."""
  bos = tokenizer.token_to_id(facts_lib.BOS)
  out: list[int] = []
  for j, part in enumerate(text.split(facts_lib.BOS)):
    if j:
      out.append(bos)
    if part.strip():
      out.extend(facts_lib.encode_words(tokenizer, part.strip(), what="text"))
  return out


def encode_request(tokenizer: Any, req: EditRequest, template: str, *,
                   with_target: bool = True, fact_token: str = "subject_last"
                   ) -> tuple[list[int], int, list[int]]:
  """Row ``<s> template(prompt(subject)) target``, the lookup index and the positions whose
  next token is a target token (``ids[p + 1]`` is that target token for every returned ``p``).

  The reference feeds ``target[:-1]`` and gathers the target ids at those positions; the row
  here holds the whole target, so the shifted ids are the labels (the extra last token changes
  no earlier position of a causal LM). ``fact_token``: ``'subject_last'`` (the subject's last
  token) or ``'last'`` (the prompt's last token), as the reference's ``fact_token`` hparam."""
  if fact_token not in ("subject_last", "last"):
    raise ValueError(f"fact_token must be 'subject_last' or 'last', found {fact_token!r}")
  full = template.replace("{}", req.prompt)
  pre, post = full.split("{}")
  bos = tokenizer.token_to_id(facts_lib.BOS)
  head = [bos] + encode_text(tokenizer, f"{pre} {req.subject}")
  lookup = len(head) - 1
  ids = head + encode_text(tokenizer, post)
  if fact_token == "last":
    lookup = len(ids) - 1
  tgt: list[int] = []
  if with_target:
    t = encode_text(tokenizer, req.target_new)
    tgt = list(range(len(ids) - 1, len(ids) - 1 + len(t)))
    ids = ids + t
  return ids, lookup, tgt


def context_templates(module: Any, params: Any, tokenizer: Any, *,
                      length_params: Sequence[tuple[int, int]] = ((5, 10), (10, 10)),
                      seed: int = 0) -> list[str]:
  """``["{}"]`` plus model-sampled prefixes (``n`` of ``length`` tokens each, ROME's
  ``context_template_length_params``), each followed by ``<s> {}`` (a masked LM samples them
  at a trailing mask: :func:`jaxparams.edit.mlm.context_templates_mlm`)."""
  if sites.of(module).masked:
    return mlm.context_templates_mlm(module, params, tokenizer, length_params=length_params,
                                      seed=seed)
  bos = tokenizer.token_to_id(facts_lib.BOS)
  out = ["{}"]
  key = jax.random.key(seed)
  for length, n in length_params:
    # A fixed [n, 1 + length] buffer: under causal attention the tokens not sampled yet do not
    # change the logits at position t, so the forward pass compiles once per (n, length).
    ids = jnp.full((n, 1 + length), bos, jnp.int32)
    for t in range(length):
      key, sub = jax.random.split(key)
      nxt = _sample_at(module, params, ids, jnp.int32(t), sub)
      ids = ids.at[:, t + 1].set(nxt)
    for row in np.asarray(ids)[:, 1:]:
      words = [tokenizer.id_to_token(int(i)) or facts_lib.UNK for i in row]
      words = [w for w in words if w not in (facts_lib.PAD, facts_lib.EOS, facts_lib.UNK)]
      out.append(" ".join(words) + f" {facts_lib.BOS} {{}}")
  return out


@functools.partial(jax.jit, static_argnums=0)
def _sample_at(module, params, ids, t, key):
  """A token sampled from the model's next-token distribution at position ``t``."""
  logits = module.apply({"params": params}, ids)
  logits = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False).astype(jnp.float32)
  return jax.random.categorical(key, logits).astype(jnp.int32)
