"""Reading and steering a model's MLP keys and hidden states through flax method interception.

``run(module, params, ids, mask, ...)`` runs the model once and returns its logits plus:

* ``keys[l]``: inputs of layer ``l``'s MLP output projection (the edited kernel's keys),
* ``hidden[l]``: the residual stream after block ``l``;

and can add a vector to layer ``l``'s MLP output (ROME's ``v*``) or block output (MEMIT's ``z``)
at one position per row. The model code is untouched: reading and steering go through the
calibration layer's :func:`jaxparams.calib.capture.capture_calls` (flax method interception of
``Linear`` ``layers_{l}/mlp/down_proj`` and ``LlamaBlock`` ``layers_{l}``, addressed by module
path), so everything stays inside ``jit``/``grad``. Only the steering (which vector is added
where) is the probe's own.

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

from jaxparams.calib import capture as calib_capture
from jaxparams.edit import sites

__all__ = ["ProbeOut", "BlockSite", "run", "run_bert", "capture", "kernel_path", "layer_of_path",
           "MLP_OUT"]

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

  Raises:
    ValueError: a layer of ``keys``/``hidden``/``mlp_out`` the model does not have.
  """
  if sites.of(module).masked:  # BERT: its own sites (FFN output dense, pre-LayerNorm sum)
    return run_bert(module, params, ids, mask, keys=keys, hidden=hidden, mlp_out=mlp_out,
                         add_mlp=add_mlp, add_block=add_block)
  from jaxparams.models.llama import LlamaBlock  # pylint: disable=g-import-not-at-top

  # The block site: the block's output (the residual stream after block l).
  return capture(module, params, ids, mask, mlp_name="down_proj",
                 block=BlockSite("layers_{}", LlamaBlock, at_input=False),
                 keys=keys, hidden=hidden, mlp_out=mlp_out, add_mlp=add_mlp, add_block=add_block)


@dataclasses.dataclass(frozen=True)
class BlockSite:
  """Where an architecture's block site (``hidden``, ``add_block``) is.

  Attributes:
    path: Module path of layer ``{}``'s site module (``'layers_{}'``).
    kind: Its type (only a module of this type at that path is the site).
    at_input: The site is the module's (first) input, else its output.
  """
  path: str
  kind: Any
  at_input: bool


def capture(module: Any, params: Any, ids: jax.Array, mask: jax.Array | None, *, mlp_name: str,
            block: BlockSite, keys: Sequence[int] = (), hidden: Sequence[int] = (),
            mlp_out: Sequence[int] = (), add_mlp: tuple[int, jax.Array, jax.Array] | None = None,
            add_block: tuple[int, jax.Array, jax.Array] | None = None) -> ProbeOut:
  """The probe shared by every architecture, on the calibration layer's
  :func:`jaxparams.calib.capture.capture_calls`: keys/outputs of the linear
  ``layers_{l}/mlp/<mlp_name>`` and the block site ``block`` (``add_block`` adds there and
  ``hidden`` reads it after the addition; see :func:`run`)."""
  from jaxparams.models.layers import Linear  # pylint: disable=g-import-not-at-top
  keys, hidden, mlp_out = set(keys), set(hidden), set(mlp_out)
  mlp_path = ("layers_{}/mlp/" + mlp_name).format
  block_path = block.path.format
  kinds = {mlp_path(l): Linear for l in keys | mlp_out}
  kinds.update({block_path(l): block.kind for l in hidden})
  steer_mlp, steer_block = {}, {}
  if add_mlp is not None:
    steer_mlp[mlp_path(add_mlp[0])] = lambda y: _add_at(y, add_mlp[1], add_mlp[2])
    kinds[mlp_path(add_mlp[0])] = Linear
  if add_block is not None:
    steer_block[block_path(add_block[0])] = lambda h: _add_at(h, add_block[1], add_block[2])
    kinds[block_path(add_block[0])] = block.kind
  block_reads = [block_path(l) for l in hidden]
  logits, ins, outs = calib_capture.capture_calls(
      module, params, ids, attention_mask=mask,
      inputs=[mlp_path(l) for l in keys] + (block_reads if block.at_input else []),
      outputs=[mlp_path(l) for l in mlp_out] + ([] if block.at_input else block_reads),
      steer_inputs=steer_block if block.at_input else {},
      steer_outputs={**steer_mlp, **({} if block.at_input else steer_block)}, kinds=kinds)
  got_keys = {l: ins[mlp_path(l)] for l in keys if mlp_path(l) in ins}
  got_out = {l: outs[mlp_path(l)] for l in mlp_out if mlp_path(l) in outs}
  got_hidden = {}
  for l in hidden:
    p = block_path(l)
    if block.at_input and p in ins:  # read after the steering, as the module received it
      got_hidden[l] = ins[p]
    elif not block.at_input and p in outs:  # the output as returned; add what the model gets
      h = outs[p]
      got_hidden[l] = steer_block[p](h) if p in steer_block else h
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

  # The block site: the sum entering the FFN's LayerNorm.
  return capture(module, params, ids, mask, mlp_name="output",
                 block=BlockSite("layers_{}/mlp_norm", LayerNorm, at_input=True),
                 keys=keys, hidden=hidden, mlp_out=mlp_out, add_mlp=add_mlp,
                 add_block=add_block)
