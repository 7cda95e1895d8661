"""Rotation folding (QuaRot): an orthogonal change of basis that keeps the model's function.

For the pre-RMSNorm decoders (Llama, Mistral, Qwen2, Qwen3, Phi-3: ``LlamaConfig`` and its
subclasses) the residual stream is rotated offline, as QuaRot's ``fuse_layer_norms`` +
``rotate_model``:

1. norm scales are fused into the Linears that read them (``W <- diag(g) W`` for q/k/v and
   gate/up, the final norm into ``lm_head``; a tied head is untied first) and set to 1, so
   ``RMSNorm(x Q) = RMSNorm(x) Q``;
2. a randomised Hadamard ``Q = diag(d) H / sqrt(d_model)`` is folded into every producer and
   consumer of the residual: ``E <- E Q``; readers (q/k/v, gate/up, lm_head; Flax kernels
   ``[in, out]``) ``W <- Q^T W``; writers (o_proj, down_proj) ``W <- W Q``, ``b <- b Q``;
3. the inputs of ``down_proj`` (size ``intermediate``) and ``o_proj`` (``heads * head_dim``)
   get an *online* Hadamard ``R`` (QuaRot's ``online_full_had``; for o_proj QuaRot splits the
   same rotation into a per-head part folded into v_proj and an online part across heads):
   ``W <- R^T W`` stored in an :class:`~jaxparams.quant.online.OnlineLinear` leaf that applies
   ``x R`` at run time through the ``dot=`` injection point.

Gemma 2/3 (sandwich norms: a scaled norm sits *between* o_proj/down_proj and the residual) and
post-LayerNorm BERT (the normalised output feeds the next residual, so no rotation passes
through a LayerNorm) cannot fold a residual rotation; every Linear there gets an online
rotation of its input instead (the incoherence processing of QuIP#): exact in full
precision, quantization sees ``R^T W`` and ``x R``, and :func:`to_stock` multiplies the
rotations back into stock weights.

:func:`rotate` is the record's function (params and config in, rotated params and config out);
:func:`check_equal` is its exactness check (the rotated full-precision model must compute the
same logits). Everything is computed in float64 numpy and cast back to each leaf's dtype.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxparams as jp
  >>> cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24,
  ...     num_hidden_layers=1, num_attention_heads=2)
  >>> ids = jnp.arange(6)[None]
  >>> params = jp.models.Llama(cfg).init(jax.random.key(0), ids)['params']
  >>> r = rotate(params, cfg)
  >>> sorted(r.sites)
  ['layers_0/attn/o_proj/kernel', 'layers_0/mlp/down_proj/kernel']
  >>> check_equal(jp.models.Llama(cfg), params, r, ids) < 1e-5
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree
from jaxparams.quant.hadamard import random_signs, rotation_matrix
from jaxparams.quant.online import OnlineLinear, is_online, online_dot

__all__ = ["RotateConfig", "Rotated", "rotate", "to_stock", "check_equal", "folds",
           "site_signs", "with_act_bits", "ROTATE_MODES"]

ROTATE_MODES = ("hadamard", "random")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RotateConfig:
  """How :func:`rotate` rotates.

  Attributes:
    mode: ``'hadamard'`` (randomised Hadamard, QuaRot's default) or ``'random'`` (random
      orthogonal matrices; QuaRot's ``--rotate_mode random``).
    seed: seed of the random signs / matrices.
  """
  mode: str = "hadamard"
  seed: int = 0

  def __post_init__(self):
    if self.mode not in ROTATE_MODES:
      raise ValueError(f"RotateConfig.mode {self.mode!r} unknown; valid: {list(ROTATE_MODES)}")


class Rotated(NamedTuple):
  """Result of :func:`rotate`: ``params`` (online sites hold :class:`OnlineLinear` leaves),
  the model ``config`` to run them with (``tie_word_embeddings`` turned off when the head was
  untied), and the online ``sites`` (kernel paths)."""
  params: Any
  config: Any
  sites: tuple[str, ...]


def folds(config: Any) -> bool:
  """Whether the residual rotation folds offline for this config (the Llama-family decoders)."""
  from jaxparams.models.llama import LlamaConfig  # pylint: disable=g-import-not-at-top
  return isinstance(config, LlamaConfig) and getattr(config, "model_type", "") != "moe_llama"


def _matrix(n: int, cfg: RotateConfig, salt: int) -> tuple[np.ndarray, np.ndarray]:
  """``(signs, R)`` for size ``n``: the same rotation for every site of that size."""
  seed = cfg.seed * 1_000_003 + n * 7 + salt
  d = random_signs(n, seed)
  if cfg.mode == "random":
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return d, q * np.sign(np.diag(r))[None, :]
  return d, rotation_matrix(n, d, seed=seed)


def site_signs(n: int, cfg: RotateConfig = RotateConfig()) -> np.ndarray:
  """The random signs of the online Hadamard of size ``n`` (what an OnlineLinear stores)."""
  return _matrix(n, cfg, 1)[0]


def _online(w: np.ndarray, n_cfg: RotateConfig, dtype: Any) -> OnlineLinear:
  k = w.shape[0]
  d, r = _matrix(k, n_cfg, 1)
  wr = (r.T @ w).astype(dtype)
  seed = n_cfg.seed * 1_000_003 + k * 7 + 1
  if n_cfg.mode == "random":
    return OnlineLinear(w=jnp.asarray(wr), matrix=jnp.asarray(r, jnp.float32), seed=seed)
  return OnlineLinear(w=jnp.asarray(wr), signs=jnp.asarray(d, jnp.float32), seed=seed)


def _kernel_paths(flat: dict[str, Any]) -> list[str]:
  return [p for p, v in flat.items() if p.endswith("/kernel") and np.ndim(v) == 2]


def rotate(params: Any, config: Any, cfg: RotateConfig = RotateConfig()) -> Rotated:
  """Folds rotations into ``params`` (see the module doc); the function is unchanged.

  Args:
    params: the model's ``'params'`` (plain arrays).
    config: its config (``LlamaConfig`` family, ``Gemma2Config``/``Gemma3Config``,
      ``BertConfig``).
    cfg: :class:`RotateConfig`.

  Returns:
    :class:`Rotated`; run it with ``family.module_cls(rotated.config, dot=online_dot)``.

  Raises:
    ValueError: a leaf is already quantized or rotated; a Llama-family tree lacks a norm.
  """
  flat = jtree.flatten(params, is_leaf=lambda v: not isinstance(v, dict))
  for p, v in flat.items():
    if not isinstance(v, (np.ndarray, jax.Array, np.generic)):
      raise ValueError(f"rotate: leaf {p!r} is {type(v).__name__}; rotate full-precision "
                       "params before quantizing")
  dtypes = {p: np.asarray(v).dtype for p, v in flat.items()}
  f64 = {p: np.asarray(v, np.float64) for p, v in flat.items()}
  if folds(config):
    f64, config = _fold_residual(f64, config, cfg)
    sites = [p for p in _kernel_paths(f64) if p.endswith(("/o_proj/kernel",
                                                          "/down_proj/kernel"))]
  else:
    heads = ("mlm_dense/kernel",)   # BERT's MLM head reads the last hidden state: kept plain
    sites = [p for p in _kernel_paths(f64) if not p.endswith(heads) and p != "lm_head/kernel"]
  out: dict[str, Any] = {}
  for p, v in f64.items():
    dt = dtypes.get(p, np.float32)
    out[p] = _online(v, cfg, dt) if p in sites else jnp.asarray(v.astype(dt))
  return Rotated(jtree.unflatten(out), config, tuple(sites))


def _readers(f64: dict[str, Any], i: int, which: str) -> list[str]:
  names = {"attn": ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/qkv_proj"),
           "mlp": ("mlp/gate_proj", "mlp/up_proj", "mlp/gate_up_proj")}[which]
  return [f"layers_{i}/{n}/kernel" for n in names if f"layers_{i}/{n}/kernel" in f64]


def _fold_residual(f64: dict[str, np.ndarray], config: Any, cfg: RotateConfig):
  """Steps 1 and 2 of the module doc on a flat float64 dict."""
  d = config.hidden_size
  _, q = _matrix(d, cfg, 0)

  def need(p: str) -> np.ndarray:
    if p not in f64:
      raise ValueError(f"rotate: {type(config).__name__} params lack {p!r}")
    return f64[p]

  def fuse(norm: str, readers: list[str]) -> None:
    g = need(norm)
    for r in readers:
      f64[r] = q.T @ (g[:, None] * f64[r])
    f64[norm] = np.ones_like(g)

  for i in range(config.num_hidden_layers):
    fuse(f"layers_{i}/input_layernorm/scale", _readers(f64, i, "attn"))
    fuse(f"layers_{i}/post_attention_layernorm/scale", _readers(f64, i, "mlp"))
    for w in ("attn/o_proj", "mlp/down_proj"):
      f64[f"layers_{i}/{w}/kernel"] = need(f"layers_{i}/{w}/kernel") @ q
      if f"layers_{i}/{w}/bias" in f64:
        f64[f"layers_{i}/{w}/bias"] = f64[f"layers_{i}/{w}/bias"] @ q
  emb = need("embed_tokens/embedding")
  if config.tie_word_embeddings:
    f64["lm_head/kernel"] = emb.T.copy()
    config = dataclasses.replace(config, tie_word_embeddings=False)
  f64["embed_tokens/embedding"] = emb @ q
  fuse("norm/scale", ["lm_head/kernel"])
  return f64, config


def with_act_bits(params: Any, paths: Any, bits: int, clip: float = 1.0) -> Any:
  """``params`` with per-token ``bits``-bit activations on the kernels ``paths`` (wrapping plain
  or quantized kernels in :class:`OnlineLinear`; existing ones get ``act_bits`` set)."""
  want = set(paths)
  flat = jtree.flatten(params, is_leaf=lambda v: is_online(v) or not isinstance(v, dict))
  missing = want - set(flat)
  if missing:
    raise ValueError(f"with_act_bits: no kernel {sorted(missing)[:3]} in the params")
  for p in want:
    leaf = flat[p]
    if is_online(leaf):
      flat[p] = dataclasses.replace(leaf, act_bits=bits, act_clip=clip)
    else:
      flat[p] = OnlineLinear(w=leaf, act_bits=bits, act_clip=clip)
  return jtree.unflatten(flat)


def to_stock(params: Any, dtype: Any = None) -> Any:
  """Plain full-precision params: every :class:`OnlineLinear` (and QArray) leaf dequantized with
  its transforms multiplied back (``W = diag(1/s) R W'``); activation quantization dropped.
  With a folded rotation the result is a stock checkpoint of :attr:`Rotated.config`."""
  def leaf(v):
    if is_online(v):
      return jnp.asarray(v.dequantize(dtype or np.float32))
    if hasattr(v, "dequantize"):
      return v.dequantize(dtype)
    return v
  return jax.tree.map(leaf, params, is_leaf=lambda v: is_online(v) or hasattr(v, "dequantize"))


def check_equal(module: Any, params: Any, rotated: Rotated, *args: Any,
                make: Callable[[Any], Any] | None = None, **kwargs: Any) -> float:
  """Max |logits difference| / max |logits| between the original and the rotated model.

  ``module`` is the original module; the rotated one is ``type(module)(rotated.config,
  dot=online_dot)`` (or ``make(config)``).
  """
  ref = module.apply({"params": params}, *args, **kwargs)
  mod = make(rotated.config) if make else type(module)(rotated.config, dot=online_dot)
  got = mod.apply({"params": rotated.params}, *args, **kwargs)
  ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
  return float(np.max(np.abs(ref - got)) / max(np.max(np.abs(ref)), 1e-30))
