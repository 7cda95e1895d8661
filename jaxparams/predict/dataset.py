"""An architecture dataset in the spirit of GPTS-1K, and the byte-level text it is trained on.

GPTS-1K (LoGAH's ``gpt2_generator.py``) samples 1000 GPT-2 variants with ``n_layer ~ U{3..9}`` and
``n_embd`` in steps of 8 from a range that shrinks as the depth grows (deep models are narrow).
:func:`sample_configs` does the same at small scale for the project's own decoder: depth, width
(steps of 8), heads, key-value heads and FFN size are drawn, and each architecture is either
``'llama'`` (SwiGLU, grouped-query attention, no biases) or ``'gpt2'`` (GPT-2-shaped: multi-head
attention, biases on every projection, FFN 4x -- on the same Llama module, since ``jp.models`` has
no GPT-2 module). :func:`byte_tokens` turns the offline prose of :mod:`jaxparams.calib.corpus` into
a byte stream (vocabulary 256).

Example:
  >>> cfgs = sample_configs(5, seed=0, depth=(1, 3), width=(16, 32))
  >>> len(cfgs), all(16 <= c.hidden_size <= 32 for c in cfgs)
  (5, True)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

import jax
import jax.numpy as jnp

from jaxparams.models import LlamaConfig, model_for_config

__all__ = ["sample_configs", "make_config", "byte_tokens", "widest", "seen_sizes", "VOCAB_SIZE",
           "STYLES"]

VOCAB_SIZE = 256
STYLES = ("llama", "gpt2")


def make_config(style: str, *, depth: int, width: int, heads: int, ffn: int,
                kv_heads: int | None = None, vocab_size: int = VOCAB_SIZE) -> LlamaConfig:
  """A decoder config of one style (``'llama'`` or ``'gpt2'``)."""
  if style not in STYLES:
    raise ValueError(f"style {style!r} unknown; valid: {list(STYLES)}")
  gpt2 = style == "gpt2"
  return LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=ffn,
                     num_hidden_layers=depth, num_attention_heads=heads,
                     num_key_value_heads=heads if gpt2 or kv_heads is None else kv_heads,
                     attention_bias=gpt2, mlp_bias=gpt2, max_position_embeddings=512)


def sample_configs(n: int, *, seed: int = 1, depth: tuple[int, int] = (1, 4),
                   width: tuple[int, int] = (16, 64), styles: Sequence[str] = STYLES,
                   vocab_size: int = VOCAB_SIZE, head_dim: int | None = None,
                   ffn_ratios: Sequence[float] = (2.0, 8 / 3, 4.0)) -> list[LlamaConfig]:
  """``n`` sampled architectures (deterministic in ``seed``).

  As in GPTS-1K the width range narrows with depth: the deepest third of ``depth`` draws from the
  lower half of ``width``, the shallowest third from the upper half. Heads divide the width with a
  head dimension >= 4; the FFN is 4x (gpt2) or one of ``ffn_ratios`` rounded to 8 (llama).
  ``head_dim`` fixes the head size (heads = width / head_dim, no grouped queries), as GPTS-1K
  fixes 8 heads: fewer distinct architectures, so fewer compilations.
  """
  rng = np.random.default_rng(seed)
  lo_d, hi_d = depth
  lo_w, hi_w = width
  mid = lo_w + ((hi_w - lo_w) // 16) * 8
  out = []
  while len(out) < n:
    d = int(rng.integers(lo_d, hi_d + 1))
    frac = (d - lo_d) / max(hi_d - lo_d, 1)
    a, b = (lo_w, mid) if frac > 2 / 3 else (mid, hi_w) if frac < 1 / 3 else (lo_w, hi_w)
    w = int(rng.choice(np.arange(a, b + 1, 8)))
    style = str(rng.choice(list(styles)))
    if head_dim:
      heads = max(1, w // head_dim)
    else:
      heads = int(rng.choice([h for h in (1, 2, 4, 8) if w % h == 0 and w // h >= 4]))
    if style == "gpt2":
      ffn, kv = 4 * w, heads
    else:
      ffn = int(round(w * float(rng.choice(list(ffn_ratios))) / 8) * 8)
      kv = heads if head_dim else int(rng.choice([k for k in (1, 2, heads) if heads % k == 0]))
    out.append(make_config(style, depth=d, width=w, heads=heads, ffn=ffn, kv_heads=kv,
                           vocab_size=vocab_size))
  return out


def widest(configs: Sequence[LlamaConfig]) -> int:
  """The largest hidden size among ``configs``."""
  return max(c.hidden_size for c in configs)


def byte_tokens(texts: Sequence[str]) -> np.ndarray:
  """UTF-8 bytes of the texts joined by newlines, as ``int32`` token ids in ``[0, 256)``."""
  return np.frombuffer("\n".join(texts).encode("utf-8"), np.uint8).astype(np.int32)


def seen_sizes(configs: Sequence[object]) -> tuple[int, ...]:
  """Every parameter dimension of the models ``configs`` (for ``HypernetConfig.seen``)."""
  sizes: set[int] = set()
  for c in set(configs):
    m = model_for_config(c)
    shapes = jax.eval_shape(lambda m=m: m.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
    for x in jax.tree_util.tree_leaves(shapes):
      sizes.update(int(d) for d in x.shape)
  return tuple(sorted(sizes))
