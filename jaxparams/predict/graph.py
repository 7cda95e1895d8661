"""Architecture graphs of the project's models, traced from their forward pass (GHN/LoGAH graphs).

A graph hypernetwork reads a network as a directed acyclic graph of its computation. LoGAH (as
GHN-3) builds it by tracing the PyTorch forward pass; here the Flax model's forward pass is traced
to a jaxpr (``jax.make_jaxpr`` over the abstract parameter tree from ``jax.eval_shape``, so nothing
is allocated) and the jaxpr is walked once:

* every equation that consumes a parameter leaf and an activation becomes a **parameter node**
  (``linear`` for a matmul, ``embedding`` for a gather, ``scale``/``shift`` for an elementwise
  product/sum with a vector), and a later leaf of the same Flax module that is applied directly
  to that node's output (a ``bias`` after its ``kernel``, a LayerNorm ``bias`` after its
  ``scale``) joins the node;
* an equation that merges activations coming from different nodes becomes an **op node**
  (``sum`` for residual adds, ``prod`` for gating, ``matmul`` for query-key and probability-value
  products, ``concat``), and a transcendental applied to activations becomes a nonlinearity node
  (``sigmoid`` in SiLU, ``exp`` in the softmax, ``tanh``/``erf`` in GELU);
* everything else (reshapes, RoPE, masks, normalisation statistics) passes its inputs' sources
  through. Edges follow the data flow, so nodes come out in topological order.

Nothing is typed per model: any module of :func:`jaxparams.models.model_for_config` (Llama family,
Gemma, BERT) gives its graph. The graph also carries the shortest-path distances (the Graphormer
edge bias of GHN-3/LoGAH) and the in/out degrees.

Example:
  >>> import jaxparams as jp
  >>> cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...                             num_hidden_layers=2, num_attention_heads=2)
  >>> g = build(cfg)
  >>> g.node_types[:3], g.n_nodes
  (('input', 'embedding', 'scale'), 39)
  >>> g.leaves['layers_0/attn/q_proj/kernel'].shape
  (16, 16)
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree

__all__ = ["Graph", "build", "OP_TYPES"]

# The node-type vocabulary (an embedding row each in the encoder); unknown types map to 'other'.
OP_TYPES = ("input", "output", "embedding", "linear", "scale", "shift", "sum", "prod", "matmul",
            "concat", "sigmoid", "exp", "tanh", "erf", "other")

_COMBINE = {"add": "sum", "sub": "sum", "add_any": "sum", "mul": "prod", "div": "prod",
            "dot_general": "matmul", "concatenate": "concat"}
_NONLINEAR = {"logistic": "sigmoid", "exp": "exp", "tanh": "tanh", "erf": "erf"}
_GATHER = ("gather", "dynamic_slice", "take")


@dataclasses.dataclass(frozen=True)
class Graph:
  """A traced architecture graph.

  Attributes:
    node_types: op type of each node (an entry of :data:`OP_TYPES`), topological order.
    node_leaves: per node, the parameter paths it owns (empty for op nodes); the first leaf's
      shape is the node's shape.
    edges: ``(parent, child)`` pairs along the data flow.
    leaves: every parameter path -> ``jax.ShapeDtypeStruct`` (the target tree, flat).
    leaf_node: parameter path -> index of the node that owns it.
    spd: ``int32[N, N]`` shortest directed path length ``i -> j`` (0: none or ``i == j``),
      clipped to 255.
  """
  node_types: tuple[str, ...]
  node_leaves: tuple[tuple[str, ...], ...]
  edges: tuple[tuple[int, int], ...]
  leaves: dict[str, Any]
  leaf_node: dict[str, int]
  spd: np.ndarray

  @property
  def n_nodes(self) -> int:
    return len(self.node_types)

  def node_shape(self, i: int) -> tuple[int, int]:
    """``(d0, d1)`` of node ``i``'s first leaf (``(d0, 1)`` for a vector, ``(0, 0)`` for ops)."""
    if not self.node_leaves[i]:
      return (0, 0)
    s = tuple(self.leaves[self.node_leaves[i][0]].shape)
    return (s[0], 1) if len(s) == 1 else (s[0], int(np.prod(s[1:])))

  def degrees(self) -> tuple[np.ndarray, np.ndarray]:
    """In- and out-degrees (``int32[N]`` each)."""
    a = np.zeros((self.n_nodes, self.n_nodes), np.int32)
    for i, j in self.edges:
      a[i, j] = 1
    return a.sum(0), a.sum(1)


def _subjaxprs(eqn) -> list:
  """Sub-jaxprs of a call-like equation whose inputs are exactly the equation's inputs."""
  out = []
  for v in eqn.params.values():
    inner = getattr(v, "jaxpr", v)
    if hasattr(inner, "eqns") and hasattr(inner, "invars") and len(inner.invars) == len(
        eqn.invars):
      out.append((inner, getattr(v, "consts", ())))
  return out


class _Tracer:
  """Walks a jaxpr, propagating for each variable either a parameter leaf or its source nodes."""

  def __init__(self, paths: list[str]):
    self.paths = paths
    self.types: list[str] = []
    self.leaves: list[list[str]] = []
    self.edges: set[tuple[int, int]] = set()
    self.leaf_node: dict[str, int] = {}

  def node(self, kind: str, parents, leaf: str | None = None) -> int:
    i = len(self.types)
    self.types.append(kind)
    self.leaves.append([leaf] if leaf else [])
    if leaf:
      self.leaf_node[leaf] = i
    self.edges.update((p, i) for p in parents)
    return i

  def walk(self, jaxpr, env: dict) -> None:
    read = lambda v: ("act", frozenset()) if not hasattr(v, "count") and not hasattr(
        v, "aval") or type(v).__name__ == "Literal" else env.get(v, ("act", frozenset()))
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      subs = _subjaxprs(eqn)
      if subs:
        inner, _ = subs[0]
        inner_env = dict(zip(inner.invars, ins))
        self.walk(inner, inner_env)
        outs = [inner_env.get(v, ("act", frozenset())) if not type(v).__name__ == "Literal"
                else ("act", frozenset()) for v in inner.outvars]
        for v, o in zip(eqn.outvars, outs):
          env[v] = o
        continue
      res = self.rule(eqn.primitive.name, ins)
      for v in eqn.outvars:
        env[v] = res

  def rule(self, prim: str, ins: list) -> tuple:
    params = [x[1] for x in ins if x[0] == "param"]
    acts = [x[1] for x in ins if x[0] == "act" and x[1]]
    if params and not acts:
      return ("param", params[0])
    if params:
      leaf = params[0]
      parents = frozenset().union(*acts)
      prefix = leaf.rsplit("/", 1)[0]
      if leaf in self.leaf_node:  # a leaf used twice (tied embeddings): a new node, no leaf
        return ("act", frozenset({self.node("linear", parents)}))
      if len(parents) == 1:
        (p,) = parents
        if self.leaves[p] and self.leaves[p][0].rsplit("/", 1)[0] == prefix:
          self.leaves[p].append(leaf)
          self.leaf_node[leaf] = p
          return ("act", parents)
      kind = ("linear" if prim == "dot_general" else "embedding" if prim in _GATHER else
              "scale" if prim in ("mul", "div") else "shift" if prim in ("add", "sub") else
              "other")
      return ("act", frozenset({self.node(kind, parents, leaf)}))
    distinct = set(acts)
    union = frozenset().union(*acts) if acts else frozenset()
    if prim in _COMBINE and len(distinct) >= 2:
      return ("act", frozenset({self.node(_COMBINE[prim], union)}))
    if prim in _NONLINEAR and union:
      return ("act", frozenset({self.node(_NONLINEAR[prim], union)}))
    return ("act", union)


def _shortest_paths(n: int, edges) -> np.ndarray:
  children = [[] for _ in range(n)]
  for i, j in edges:
    children[i].append(j)
  spd = np.zeros((n, n), np.int32)
  for s in range(n):
    dist = {s: 0}
    q = deque([s])
    while q:
      u = q.popleft()
      for w in children[u]:
        if w not in dist:
          dist[w] = dist[u] + 1
          q.append(w)
    for t, d in dist.items():
      spd[s, t] = min(d, 255)
  return spd


def build(config: Any, *, module: Any = None, seq_len: int = 4) -> Graph:
  """Traces the architecture graph of a model config (nothing is allocated).

  Args:
    config: a config of any family :func:`jaxparams.models.model_for_config` knows.
    module: the Flax module to trace (default: the family's module for ``config``); called as
      ``module.apply({'params': p}, ids)``.
    seq_len: length of the dummy token sequence traced.

  Returns:
    The :class:`Graph`; ``graph.leaves`` is exactly the flat parameter tree of ``module.init``.

  """
  if module is None:
    from jaxparams.models import model_for_config  # pylint: disable=g-import-not-at-top
    module = model_for_config(config)
  ids = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  abstract = jax.eval_shape(lambda i: module.init(jax.random.key(0), i), ids)["params"]
  flat_with_path, _ = jax.tree_util.tree_flatten_with_path(abstract)
  paths = [jtree.path_str(kp) for kp, _ in flat_with_path]
  closed = jax.make_jaxpr(lambda p, i: module.apply({"params": p}, i))(abstract, ids)
  jaxpr = closed.jaxpr
  t = _Tracer(paths)
  inp = t.node("input", ())
  env = {v: ("param", p) for v, p in zip(jaxpr.invars[:len(paths)], paths)}
  for v in jaxpr.invars[len(paths):]:
    env[v] = ("act", frozenset({inp}))
  t.walk(jaxpr, env)
  outs = frozenset().union(*[env[v][1] for v in jaxpr.outvars if v in env and env[v][0] == "act"])
  leaves = jtree.flatten(abstract)
  # Leaves the traced call never uses (e.g. BERT's pooler when only hidden states are returned)
  # still need values: one node per module, hanging off the output's sources.
  orphans: dict[str, int] = {}
  for path in paths:
    if path not in t.leaf_node:
      prefix = path.rsplit("/", 1)[0]
      if prefix in orphans:
        t.leaves[orphans[prefix]].append(path)
        t.leaf_node[path] = orphans[prefix]
      else:
        orphans[prefix] = t.node("linear" if len(leaves[path].shape) > 1 else "scale", outs, path)
  t.node("output", outs)
  edges = tuple(sorted(t.edges))
  return Graph(node_types=tuple(t.types), node_leaves=tuple(tuple(x) for x in t.leaves),
               edges=edges, leaves=leaves, leaf_node=dict(t.leaf_node),
               spd=_shortest_paths(len(t.types), edges))
