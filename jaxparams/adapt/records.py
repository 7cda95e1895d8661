"""Adapter transform records (one definition, run by the tree API and by the streaming driver).

* ``lora_merge``: ``base + models``: base = the weight, models = ``(a, b)`` or ``(a, b,
  magnitude)`` (DoRA); ``scale`` is an array hyperparameter (vmap/grad; per-module values in a
  stream do not recompile). ``layout='flax'``: ``w[in, out]``, ``a[in, r]``, ``b[r, out]``;
  ``layout='hf'``: PEFT tensors as stored (``weight[out, in]``, ``lora_A[r, in]``,
  ``lora_B[out, r]``; with ``embedding=True``: ``weight[vocab, dim]``,
  ``lora_embedding_A[r, vocab]``, ``lora_embedding_B[dim, r]``).
* ``lora_unmerge``: the inverse (DoRA needs the stored norm as a 4th model).
* ``lora_bias_merge``: ``bias + scale * lora_B.bias`` (PEFT's ``lora_bias``).
* ``lora_replace``: a ``modules_to_save`` tensor replacing the base's: same shape as the base
  tensor, floating-point, finite, written in the base's dtype (checked before publishing).
* ``lora_extract``: ``base + (finetuned,)`` -> the truncated-SVD factors of the delta (run
  eagerly: the rank is chosen from the singular values on the host).
* ``peft_ties``, ``peft_dare_linear``, ``peft_dare_ties``, ``peft_magnitude_prune``: PEFT's merge
  functions (``peft.utils.merge_utils``) used by :func:`jaxparams.adapt.combine`; their
  semantics differ from mergekit's records in :mod:`jaxparams.merge` (sign elected on the
  unweighted sum, disjoint mean over the agreeing *count*, ``k = int(density * n)``), so those are
  not reused for them; ``linear`` combinations do reuse mergekit's ``task_arithmetic`` record.

Example:
  >>> import jax.numpy as jnp
  >>> w = jnp.zeros((3, 2)); a = jnp.ones((3, 1)); b = jnp.ones((1, 2))
  >>> LORA_MERGE(w, (a, b), {'scale': 0.5}).tolist()
  [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]
  >>> LORA_MERGE(w, (a, jnp.ones((2, 2))), {'scale': 0.5})
  Traceback (most recent call last):
  ...
  ValueError: transform 'lora_merge': lora shapes do not fit: weight (3, 2) ([in, out]), a (3, 1), b (2, 2); expected a [3, r], b [r, 2]
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxparams import transform as jt
from jaxparams.adapt import lora as L
from jaxparams.adapt.merge_utils import peft_merge
from jaxparams.adapt.svd import factorize

__all__ = ["LoraMergeConfig", "LORA_MERGE", "LORA_UNMERGE", "LORA_BIAS_MERGE", "RECORDS",
           "ReplaceConfig", "LORA_REPLACE",
           "to_flax", "PeftMergeConfig", "PEFT_MERGES", "LoraExtractConfig", "LORA_EXTRACT"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraMergeConfig:
  """``scale``: the module's scaling (times any global weight); ``layout``: 'flax' or 'hf';
  ``embedding``: the hf tensors are ``lora_embedding_A/B`` of an embedding table."""
  scale: float = 1.0
  layout: str = "flax"
  embedding: bool = False


def to_flax(w, a, b, layout: str, embedding: bool):
  """Returns ``(w, a, b)`` in Flax orientation (and whether ``w`` was transposed)."""
  if layout == "flax":
    return w, a, b, False
  if embedding:  # weight [vocab, dim] = flax; a = A_e.T [vocab, r]; b = B_e.T [r, dim]
    return w, a.T, b.T, False
  return w.T, a.T, b.T, True


def _layout_static(ctx: jt.CheckContext) -> None:
  c = ctx.config
  if c.layout not in ("flax", "hf"):
    raise ValueError(f"{ctx.where}: layout must be 'flax' or 'hf', got {c.layout!r}")
  w, a, b = (tuple(s) for s in ctx.shapes[:3])
  if c.layout == "hf":
    if c.embedding:
      w, a, b = w, a[::-1], b[::-1]
    else:
      w, a, b = w[::-1], a[::-1], b[::-1]
  if len(w) != 2 or len(a) != 2 or len(b) != 2 or a[0] != w[0] or b[1] != w[1] or a[1] != b[0]:
    raise ValueError(f"{ctx.where}: lora shapes do not fit: weight {tuple(ctx.shapes[0])} "
                     f"({'[in, out]' if c.layout == 'flax' else 'as stored'}), a "
                     f"{tuple(ctx.shapes[1])}, b {tuple(ctx.shapes[2])}; expected a "
                     f"[{w[0]}, r], b [r, {w[1]}]" if c.layout == "flax" else
                     f"{ctx.where}: lora shapes do not fit: weight {tuple(ctx.shapes[0])}, "
                     f"lora_A {tuple(ctx.shapes[1])}, lora_B {tuple(ctx.shapes[2])}")
  for extra in ctx.shapes[3:]:
    if extra is not None and tuple(extra) != (w[1],):
      raise ValueError(f"{ctx.where}: DoRA vector has shape {tuple(extra)}, expected ({w[1]},)")


lora_shapes = jt.Check("lora_shapes", static=_layout_static)


def _merge(base, models, c):
  w, a, b, tr = to_flax(base, models[0], models[1], c.layout, c.embedding)
  if len(models) == 3:
    out = L.dora_merge_tensor(w, a, b, c.scale, models[2])[0]
  else:
    out = L.merge_tensor(w, a, b, c.scale)
  return out.T if tr else out


def _unmerge(base, models, c):
  w, a, b, tr = to_flax(base, models[0], models[1], c.layout, c.embedding)
  if len(models) == 4:
    out = L.dora_unmerge_tensor(w, a, b, c.scale, models[2], models[3])
  elif len(models) == 2:
    out = L.unmerge_tensor(w, a, b, c.scale)
  else:
    raise ValueError("lora_unmerge takes (a, b) or (a, b, magnitude, norm)")
  return out.T if tr else out


def _bias(base, models, c):
  return (base.astype(jnp.float32) + jnp.asarray(c.scale, jnp.float32)
          * models[0].astype(jnp.float32)).astype(base.dtype)


LORA_MERGE = jt.Transform(
    name="lora_merge", fn=_merge, config=LoraMergeConfig, array_params=("scale",),
    checks=(lora_shapes, jt.float_inputs, jt.finite), inputs="base+models", base="required",
    min_models=2, max_models=3,
    description="W + scale * A@B (DoRA: rescaled to the magnitude per output unit)")
LORA_UNMERGE = jt.Transform(
    name="lora_unmerge", fn=_unmerge, config=LoraMergeConfig, array_params=("scale",),
    checks=(lora_shapes, jt.float_inputs, jt.finite), inputs="base+models", base="required",
    min_models=2, max_models=4, description="inverse of lora_merge (DoRA from the stored norm)")
LORA_BIAS_MERGE = jt.Transform(
    name="lora_bias_merge", fn=_bias, config=LoraMergeConfig, array_params=("scale",),
    checks=(jt.same_shapes, jt.finite), inputs="base+models", base="required", min_models=1,
    max_models=1, description="bias + scale * lora_B.bias")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplaceConfig:
  """No parameters: the replacement is taken as is (cast to the base tensor's dtype)."""


def _replace(base, models, c):
  del c
  return models[0].astype(base.dtype)


LORA_REPLACE = jt.Transform(
    name="lora_replace", fn=_replace, config=ReplaceConfig,
    checks=(jt.same_shapes, jt.float_inputs, jt.finite), inputs="base+models", base="required",
    min_models=1, max_models=1,
    description="a modules_to_save tensor replacing the base's (same shape, float, finite)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PeftMergeConfig:
  """PEFT's merge-function parameters: one weight per tensor, ``density``, sign method."""
  weights: tuple = ()
  density: float = 1.0
  majority_sign_method: str = "total"


def _peft_static(ctx: jt.CheckContext) -> None:
  c = ctx.config
  n = sum(s is not None for s in ctx.shapes)
  if not jt.is_traced(c.weights) and len(c.weights) != n:
    raise ValueError(f"{ctx.where}: {len(c.weights)} weights for {n} tensors")
  if not jt.is_traced(c.density) and not c.density >= 0:
    raise ValueError(f"{ctx.where}: density should be >= 0, got {c.density}")
  if c.majority_sign_method not in ("total", "frequency"):
    raise ValueError(f"{ctx.where}: majority_sign_method {c.majority_sign_method!r}; valid: "
                     "'total', 'frequency'")


def _peft_record(kind: str) -> jt.Transform:
  def fn(base, models, c, key=None, masks=None):
    return peft_merge(kind, models, c.weights, density=c.density,
                      majority_sign_method=c.majority_sign_method, key=key, masks=masks)
  random = "dare" in kind
  return jt.Transform(
      name=f"peft_{kind}", fn=fn, config=PeftMergeConfig,
      array_params=("weights",) + (("density",) if random else ()),
      checks=(jt.same_shapes, jt.Check("peft_params", static=_peft_static), jt.finite),
      inputs="base+models", base="ignored", min_models=1,
      needs_key=(lambda c: False) if random else False, options=("masks",) if random else (),
      description=f"peft.utils.merge_utils.{kind} (sign on the unweighted sum, mean over the "
      "agreeing count)" if "ties" in kind else f"peft.utils.merge_utils.{kind}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraExtractConfig:
  """mergekit-extract-lora's choices: ``max_rank``, absolute ``sv_epsilon``, ``distribute_scale``;
  plus ``energy`` (keep this share of ``sum S^2``). ``layout``: 'flax' (``[in, out]``) or 'hf'
  (``weight[out, in]``; the factors come back as PEFT's ``lora_A``/``lora_B``); ``embedding``
  as in :class:`LoraMergeConfig`."""
  max_rank: int = 128
  sv_epsilon: float = 0.0
  energy: float | None = None
  distribute_scale: bool = True
  layout: str = "flax"
  embedding: bool = False


def _extract(base, models, c):
  w0, w1 = base, models[0]
  if c.layout == "hf" and not c.embedding:
    w0, w1 = w0.T, w1.T
  a, b, s = factorize(w1.astype(jnp.float32) - w0.astype(jnp.float32), c)
  if c.layout == "hf":
    return {"lora_A": a.T, "lora_B": b.T, "singular_values": s}
  return {"a": a, "b": b, "singular_values": s}


def _extract_static(ctx: jt.CheckContext) -> None:
  c = ctx.config
  if len(ctx.shapes[0]) != 2:
    raise ValueError(f"{ctx.where}: LoRA extraction needs a 2-D weight, got {ctx.shapes[0]}")
  if int(c.max_rank) < 1:
    raise ValueError(f"{ctx.where}: max_rank must be >= 1, got {c.max_rank}")
  if c.energy is not None and not 0 < c.energy <= 1:
    raise ValueError(f"{ctx.where}: energy must be in (0, 1], got {c.energy}")


LORA_EXTRACT = jt.Transform(
    name="lora_extract", fn=_extract, config=LoraExtractConfig,
    checks=(jt.same_shapes, jt.float_inputs, jt.Check("extract_params", static=_extract_static),
            jt.finite),
    inputs="base+models", base="required", min_models=1, max_models=1,
    description="truncated SVD of (fine-tuned - base): the best rank-r LoRA (Eckart-Young); "
    "the rank is chosen on the host from the singular values, so it runs eagerly")

PEFT_MERGES = {k: _peft_record(k) for k in ("ties", "dare_linear", "dare_ties",
                                            "magnitude_prune")}

RECORDS = jt.Registry("adapter transform", [LORA_MERGE, LORA_UNMERGE, LORA_BIAS_MERGE, LORA_REPLACE,
                                            LORA_EXTRACT, *PEFT_MERGES.values()])
