"""Architecture adapters of locate-then-edit (ROME, MEMIT, AlphaEdit): Llama and BERT.

An :class:`Arch` says which kernel is the edited "value matrix", where its keys come from and how
a request becomes token rows:

* ``llama`` (causal LM): ``layers_{l}/mlp/down_proj/kernel``; rows ``<s> prompt target``, the
  target scored as next tokens; the block site is the block output (residual stream).
* ``bert`` (masked LM, :class:`jaxparams.models.Bert` with ``mlm_head``):
  ``layers_{l}/mlp/output/kernel``, the FFN output dense (HF ``encoder.layer.{l}.output.dense``),
  whose keys are the GELU activations of ``intermediate``; rows
  ``[CLS] prompt [MASK]... [SEP]`` with one ``[MASK]`` per target token, the target scored at
  the masks (the cloze form of Knowledge Neurons, Dai et al. 2022; EasyEdit does not edit BERT,
  zjunlp/EasyEdit#59). BERT is post-LN, so the block site (MEMIT's ``z``) is the pre-LayerNorm
  sum ``h + FFN(h)`` of the layer: a change of the FFN output adds to it exactly, as an MLP
  output adds to a Llama's residual stream. The KL term of the target optimisation reads the
  ``[MASK]`` of ``"{} is a [MASK]"`` (the subject position of a masked LM predicts the subject
  itself). ``<s>`` in a template stands for ``[SEP]``.

Everything else (statistics, closed-form updates, deltas, ``where=`` selection) is shared.

Example:
  >>> kernel_path(3, BERT), layer_of_path('layers_3/mlp/output/kernel')
  ('layers_3/mlp/output/kernel', 3)
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models import Bert, BertConfig
  >>> cfg = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
  ...                  intermediate_size=16, mlm_head=True, add_pooling_layer=False)
  >>> m = Bert(cfg); p = m.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']
  >>> of(m).name, of(p).name
  ('bert', 'bert')
  >>> out = run_bert(m, p, jnp.ones((1, 4), jnp.int32), None, keys=(1,), hidden=(0,))
  >>> out.logits.shape, out.keys[1].shape, out.hidden[0].shape
  ((1, 4, 16), (1, 4, 16), (1, 4, 8))
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

__all__ = ["Arch", "LLAMA", "BERT", "ARCHS", "of", "kernel_path", "bias_path", "layer_of_path",
           "run_bert", "encode_request_mlm", "encode_batch_mlm", "context_templates_mlm",
           "mlm_target_logprobs", "text_batches_mlm", "MASK", "CLS", "SEP", "UNK"]

MASK, CLS, SEP, UNK, PAD = "[MASK]", "[CLS]", "[SEP]", "[UNK]", "[PAD]"


@dataclasses.dataclass(frozen=True)
class Arch:
  """One architecture's edit sites.

  Attributes:
    name: ``'llama'`` or ``'bert'``.
    kernel: Path of layer ``{}``'s edited kernel.
    masked: Targets are predicted at ``[MASK]`` tokens (masked LM) instead of as next tokens.
  """
  name: str
  kernel: str
  masked: bool


LLAMA = Arch("llama", "layers_{}/mlp/down_proj/kernel", False)
BERT = Arch("bert", "layers_{}/mlp/output/kernel", True)
ARCHS = {a.name: a for a in (LLAMA, BERT)}
_LAYER = re.compile(r"layers_(\d+)/mlp/(down_proj|output)/kernel")


def of(like: Any) -> Arch:
  """The :class:`Arch` of a module (``Bert`` -> BERT, else Llama) or of a params tree (by the
  name of layer 0's FFN output: ``output`` -> BERT, else Llama)."""
  if isinstance(like, nn.Module):
    from jaxparams.models.bert import Bert  # pylint: disable=g-import-not-at-top
    return BERT if isinstance(like, Bert) else LLAMA
  if isinstance(like, dict):
    lay = next((v for k, v in like.items() if re.fullmatch(r"layers_\d+", str(k))), None)
    if isinstance(lay, dict) and isinstance(lay.get("mlp"), dict) and "output" in lay["mlp"]:
      return BERT
  return LLAMA


def kernel_path(layer: int, arch: Arch | Any = None) -> str:
  """Path of layer ``layer``'s edited kernel (``arch``: an :class:`Arch`, module or params;
  None = Llama)."""
  a = arch if isinstance(arch, Arch) else (LLAMA if arch is None else of(arch))
  return a.kernel.format(layer)


def bias_path(layer: int, arch: Arch | Any = None) -> str:
  """Path of the edited layer's bias (BERT's output dense has one; a Llama with ``mlp_bias``)."""
  return kernel_path(layer, arch)[:-len("kernel")] + "bias"


def layer_of_path(path: str) -> int:
  """Layer index of an edited-kernel path (either architecture); ValueError for any other leaf."""
  m = _LAYER.fullmatch(path)
  if not m:
    raise ValueError(f"leaf {path!r} is not an MLP output projection kernel (expected "
                     f"{LLAMA.kernel.format('N')} or {BERT.kernel.format('N')})")
  return int(m.group(1))


def _need_head(module: Any) -> None:
  if not getattr(module.config, "mlm_head", False):
    raise ValueError("editing targets on a BERT need its masked-LM head: load a BertForMaskedLM "
                     "checkpoint (BertConfig(mlm_head=True)); a BertModel without a head only "
                     "gives keys and statistics")


def run_bert(module: Any, params: Any, ids: jax.Array, mask: jax.Array | None, *,
             keys: Sequence[int] = (), hidden: Sequence[int] = (), mlp_out: Sequence[int] = (),
             add_mlp: tuple[int, jax.Array, jax.Array] | None = None,
             add_block: tuple[int, jax.Array, jax.Array] | None = None, **_: Any) -> Any:
  """:func:`jaxparams.edit.probe.run` for a BERT: keys = inputs of ``layers_{l}/mlp/output``,
  ``hidden[l]`` = the pre-LayerNorm sum ``h + FFN(h)`` of layer ``l`` (``add_block`` adds
  there); ``logits`` are the masked-LM logits (the hidden states without a head)."""
  from jaxparams.edit import probe  # pylint: disable=g-import-not-at-top
  from jaxparams.models.layers import LayerNorm  # pylint: disable=g-import-not-at-top

  def block_site(mod, path, next_fun, args, kwargs):  # the sum entering the FFN's LayerNorm
    if not (isinstance(mod, LayerNorm) and len(path) == 2 and path[1] == "mlp_norm"):
      return None
    return (int(path[0].split("_")[1]), args[0],
            lambda x: next_fun(x, *args[1:], **kwargs))

  return probe.capture(module, params, ids, mask, mlp_name="output", block_site=block_site,
                       keys=keys, hidden=hidden, mlp_out=mlp_out, add_mlp=add_mlp,
                       add_block=add_block)


# ---- token rows of a masked LM --------------------------------------------------------------

def _special(tokenizer: Any, token: str) -> int:
  i = tokenizer.token_to_id(token)
  if i is None:
    raise ValueError(f"the tokenizer has no {token} token (a masked-LM tokenizer needs "
                     f"{CLS}, {SEP} and {MASK})")
  return int(i)


def encode_text_mlm(tokenizer: Any, text: str, *, what: str = "text") -> list[int]:
  """Token ids of ``text`` (no special tokens added; ``<s>`` in the text is ``[SEP]``);
  ValueError on words the tokenizer maps to ``[UNK]``."""
  from jaxparams.edit import facts as facts_lib  # pylint: disable=g-import-not-at-top
  out: list[int] = []
  for j, part in enumerate(text.split(facts_lib.BOS)):
    if j:
      out.append(_special(tokenizer, SEP))
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
  head = [_special(tokenizer, CLS)] + encode_text_mlm(tokenizer, f"{pre} {req.subject}",
                                                      what="prompt")
  lookup = len(head) - 1
  ids = head + encode_text_mlm(tokenizer, post, what="prompt")
  if fact_token == "last":
    lookup = len(ids) - 1
  labels = (encode_text_mlm(tokenizer, req.target_new, what="target") if n_mask is None
            else [-1] * n_mask)
  pos = list(range(len(ids), len(ids) + len(labels)))
  ids = ids + [_special(tokenizer, MASK)] * len(labels) + [_special(tokenizer, SEP)]
  return ids, lookup, pos, labels


def encode_batch_mlm(tokenizer: Any, requests: Sequence[Any], templates: Sequence[str],
                     kl_prompts: Sequence[str], fact_token: str = "subject_last") -> Any:
  """:func:`jaxparams.edit.targets.encode_batch` for a masked LM: ``labels`` hold the target
  token at each ``[MASK]`` (``tmask`` marks them) and ``kl_pos`` the mask of the KL prompts."""
  from jaxparams.edit import requests as req_lib  # pylint: disable=g-import-not-at-top
  from jaxparams.edit import targets as tgt_lib  # pylint: disable=g-import-not-at-top
  rows_all, look_all, pos_all, lab_all, klp_all = [], [], [], [], []
  n_target = []
  for r in requests:
    rows, look, poss, labs, klp = [], [], [], [], []
    for tpl in templates:
      ids, lk, pos, lab = encode_request_mlm(tokenizer, r, tpl, fact_token=fact_token)
      rows.append(ids), look.append(lk), poss.append(pos), labs.append(lab), klp.append(pos[0])
    for kp in kl_prompts:
      kr = req_lib.EditRequest(kp, r.subject, r.target_new)
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
  return tgt_lib.Batch(ids, mask, tmask, np.asarray(look_all, np.int32), is_kl,
                       np.asarray(n_target, np.float32), labels=labels,
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
  _need_head(module)
  cls, sep, msk = (_special(tokenizer, t) for t in (CLS, SEP, MASK))
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
  from jaxparams.edit import requests as req_lib  # pylint: disable=g-import-not-at-top
  rows, poss, labs = [], [], []
  for p, t in zip(prompts, targets, strict=True):
    ids, _, pos, lab = encode_request_mlm(tokenizer, req_lib.EditRequest("{}", p, t), "{}")
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


def text_batches_mlm(tokenizer: Any, texts: Sequence[str], *, batch_size: int = 64,
                     seq_len: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
  """``[CLS] text [SEP]`` rows (truncated to ``seq_len``), right-padded, in batches: the key
  statistics' text of a masked LM (:func:`jaxparams.edit.stats.text_batches` for a causal one)."""
  cls, sep = _special(tokenizer, CLS), _special(tokenizer, SEP)
  rows = [([cls] + tokenizer.encode(t.strip(), add_special_tokens=False).ids)[:seq_len - 1]
          + [sep] for t in texts if t.strip()]
  from jaxparams.edit import stats  # pylint: disable=g-import-not-at-top
  return stats.pad_rows(rows, batch_size, seq_len)
