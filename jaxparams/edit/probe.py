"""Reading and steering a model's MLP keys and hidden states through flax method interception.

``run(module, params, ids, mask, ...)`` runs the model once and returns its logits plus:

* ``keys[l]``: inputs of layer ``l``'s MLP output projection (the edited kernel's keys),
* ``hidden[l]``: the residual stream after block ``l``;

and can add a vector to layer ``l``'s MLP output (ROME's ``v*``) or block output (MEMIT's ``z``)
at one position per row. The model code is untouched: the hooks are ``nn.intercept_methods``
interceptors on ``Linear`` (``layers_{l}/mlp/down_proj``) and ``LlamaBlock`` (``layers_{l}``),
so everything stays inside ``jit``/``grad``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models import Llama, LlamaConfig
  >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
  ...                   num_hidden_layers=2, num_attention_heads=2)
  >>> m = Llama(cfg); ids = jnp.ones((1, 4), jnp.int32)
  >>> p = m.init(jax.random.key(0), ids)['params']
  >>> out = run(m, p, ids, None, keys=(1,), hidden=(0,))
  >>> out.keys[1].shape, out.hidden[0].shape
  ((1, 4, 16), (1, 4, 8))
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxparams.edit import sites

__all__ = ["ProbeOut", "run", "run_bert", "capture", "kernel_path", "layer_of_path", "MLP_OUT"]

# Path of the edited kernel of layer l (the MLP output projection; "value matrix").
MLP_OUT = "layers_{}/mlp/down_proj/kernel"
_LAYER = re.compile(r"layers_(\d+)/mlp/down_proj/kernel")


def kernel_path(layer: int, like: Any = None) -> str:
  """Flat path of layer ``layer``'s MLP output kernel (``like``: a module or params tree whose
  architecture decides, :mod:`jaxparams.edit.arch`; None = Llama)."""
  if like is not None:
    return sites.kernel_path(layer, like)
  return MLP_OUT.format(layer)

def get_kernel(params: Any, layer: int) -> Any:
  """Layer ``layer``'s MLP output kernel leaf (a plain array or a side-memory wrapper)."""
  return params[f"layers_{layer}"]["mlp"]["down_proj"]["kernel"]


def set_kernel(params: Any, layer: int, leaf: Any) -> Any:
  """A copy of ``params`` whose layer ``layer`` MLP output kernel is ``leaf`` (others shared)."""
  params = dict(params)
  lay = dict(params[f"layers_{layer}"])
  mlp = dict(lay["mlp"])
  mlp["down_proj"] = {**mlp["down_proj"], "kernel": leaf}
  lay["mlp"] = mlp
  params[f"layers_{layer}"] = lay
  return params


def layer_of_path(path: str) -> int:
  """Layer index of an MLP output kernel path (Llama ``down_proj`` or BERT ``output``);
  ValueError for any other leaf."""
  return sites.layer_of_path(path)


@dataclasses.dataclass
class ProbeOut:
  logits: jax.Array
  keys: dict[int, jax.Array]
  hidden: dict[int, jax.Array]
  mlp_out: dict[int, jax.Array] = dataclasses.field(default_factory=dict)


jax.tree_util.register_pytree_node(
    ProbeOut, lambda o: ((o.logits, o.keys, o.hidden, o.mlp_out), None),
    lambda _, ch: ProbeOut(*ch))


def _add_at(out: jax.Array, vec: jax.Array, pos: jax.Array) -> jax.Array:
  onehot = jax.nn.one_hot(pos, out.shape[1], dtype=out.dtype)  # [b, t]
  vec = jnp.broadcast_to(vec, (out.shape[0], out.shape[-1])).astype(out.dtype)
  return out + onehot[:, :, None] * vec[:, None, :]


def run(module: Any, params: Any, ids: jax.Array, mask: jax.Array | None, *,
        keys: Sequence[int] = (), hidden: Sequence[int] = (), mlp_out: Sequence[int] = (),
        add_mlp: tuple[int, jax.Array, jax.Array] | None = None,
        add_block: tuple[int, jax.Array, jax.Array] | None = None,
        dot: Any = None) -> ProbeOut:
  """Runs the model, capturing keys/hidden states and optionally adding a vector.

  Args:
    module: A ``jaxparams.models.Llama`` (or a ``Bert``: :func:`run_bert`).
    params: Its params.
    ids: ``int[b, t]``; mask: ``[b, t]`` attention mask or None.
    keys: Layers whose MLP output-projection inputs to capture.
    hidden: Layers whose block outputs to capture.
    mlp_out: Layers whose MLP outputs (before any ``add_mlp``) to capture.
    add_mlp: ``(layer, vec [d] or [b, d], pos int[b])`` added to that layer's MLP output.
    add_block: ``(layer, vec, pos)`` added to that block's output.
  """
  if sites.of(module).masked:  # BERT: its own sites (FFN output dense, pre-LayerNorm sum)
    return run_bert(module, params, ids, mask, keys=keys, hidden=hidden, mlp_out=mlp_out,
                         add_mlp=add_mlp, add_block=add_block)
  from jaxparams.models.llama import LlamaBlock  # pylint: disable=g-import-not-at-top

  def block_site(mod, path, next_fun, args, kwargs):  # the block's output (residual stream)
    if not (isinstance(mod, LlamaBlock) and len(path) == 1):
      return None
    return _layer_of(path[0]), next_fun(*args, **kwargs), lambda out: out

  return capture(module, params, ids, mask, mlp_name="down_proj", block_site=block_site,
                 keys=keys, hidden=hidden, mlp_out=mlp_out, add_mlp=add_mlp, add_block=add_block)


def _layer_of(name: str) -> int:
  return int(name.split("_")[1])


def capture(module: Any, params: Any, ids: jax.Array, mask: jax.Array | None, *, mlp_name: str,
            block_site: Any, keys: Sequence[int] = (), hidden: Sequence[int] = (),
            mlp_out: Sequence[int] = (), add_mlp: tuple[int, jax.Array, jax.Array] | None = None,
            add_block: tuple[int, jax.Array, jax.Array] | None = None) -> ProbeOut:
  """The interception shared by every architecture: keys/outputs of ``layers_{l}/mlp/<mlp_name>``
  and the block site ``block_site(mod, path, next_fun, args, kwargs) -> (layer, value, finish)
  | None``: ``value`` receives ``add_block`` and is captured in ``hidden``, ``finish(value)`` is
  what the intercepted call returns (see :func:`run`)."""
  from jaxparams.models.layers import Linear  # pylint: disable=g-import-not-at-top
  got_keys: dict[int, jax.Array] = {}
  got_hidden: dict[int, jax.Array] = {}
  got_out: dict[int, jax.Array] = {}
  keys, hidden, mlp_out = set(keys), set(hidden), set(mlp_out)

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    path = mod.path
    if isinstance(mod, Linear) and len(path) == 3 and path[1:] == ("mlp", mlp_name):
      layer = _layer_of(path[0])
      if layer in keys:
        got_keys[layer] = args[0]
      out = next_fun(*args, **kwargs)
      if layer in mlp_out:
        got_out[layer] = out
      if add_mlp is not None and add_mlp[0] == layer:
        out = _add_at(out, add_mlp[1], add_mlp[2])
      return out
    site = block_site(mod, path, next_fun, args, kwargs)
    if site is None:
      return next_fun(*args, **kwargs)
    layer, out, finish = site
    if add_block is not None and add_block[0] == layer:
      out = _add_at(out, add_block[1], add_block[2])
    if layer in hidden:
      got_hidden[layer] = out
    return finish(out)

  with nn.intercept_methods(interceptor):
    logits = module.apply({"params": params}, ids, attention_mask=mask)
  missing = sorted((keys - set(got_keys)) | (hidden - set(got_hidden))
                   | (mlp_out - set(got_out)))
  if missing:
    raise ValueError(f"layer(s) {missing} not found in the model (it has "
                     f"{getattr(module.config, 'num_hidden_layers', '?')} layers)")
  return ProbeOut(logits, got_keys, got_hidden, got_out)


def run_bert(module: Any, params: Any, ids: jax.Array, mask: jax.Array | None, *,
             keys: Sequence[int] = (), hidden: Sequence[int] = (), mlp_out: Sequence[int] = (),
             add_mlp: tuple[int, jax.Array, jax.Array] | None = None,
             add_block: tuple[int, jax.Array, jax.Array] | None = None, **_: Any) -> Any:
  """:func:`run` for a BERT: keys = inputs of ``layers_{l}/mlp/output``,
  ``hidden[l]`` = the pre-LayerNorm sum ``h + FFN(h)`` of layer ``l`` (``add_block`` adds
  there); ``logits`` are the masked-LM logits (the hidden states without a head)."""
  from jaxparams.models.layers import LayerNorm  # pylint: disable=g-import-not-at-top

  def block_site(mod, path, next_fun, args, kwargs):  # the sum entering the FFN's LayerNorm
    if not (isinstance(mod, LayerNorm) and len(path) == 2 and path[1] == "mlp_norm"):
      return None
    return (int(path[0].split("_")[1]), args[0],
            lambda x: next_fun(x, *args[1:], **kwargs))

  return capture(module, params, ids, mask, mlp_name="output", block_site=block_site,
                       keys=keys, hidden=hidden, mlp_out=mlp_out, add_mlp=add_mlp,
                       add_block=add_block)
