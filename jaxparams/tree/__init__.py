"""Paths and selection: the ground floor of jaxparams (imports nothing of ours).

Leaves are addressed by ``/``-joined paths (``layers/3/mlp/kernel``) and
chosen with ``where=`` selectors (glob, regex, first-match rules, predicate or
mask tree).

Example:
  >>> import jaxparams as jp, jax.numpy as jnp
  >>> params = {'layers': [{'mlp': {'kernel': jnp.ones((2, 2))}}]}
  >>> list(jp.tree.flatten(params))
  ['layers/0/mlp/kernel']
"""

from jaxparams.tree.ops import LeafDiff, allclose, cast, combine, diff, map, map_with_path, partition
from jaxparams.tree.paths import flatten, leaf_paths, path_str, unflatten
from jaxparams.tree.select import NoMatchError, Selector, compile_pattern, is_rules, resolve_rules, select
from jaxparams.tree.summary import LeafStats, Summary, human_bytes, leaf_stats, summary, summary_from_specs

__all__ = [
    "LeafDiff", "LeafStats", "NoMatchError", "Selector", "Summary", "allclose", "cast", "combine",
    "compile_pattern", "diff", "flatten", "human_bytes", "is_rules", "leaf_paths", "leaf_stats",
    "map", "map_with_path", "partition", "path_str", "resolve_rules", "select", "summary",
    "summary_from_specs", "unflatten",
]
