"""``where=`` selectors: one language for choosing leaves, used everywhere.

A selector is one of:

* ``None`` -- every leaf;
* a glob string (``layers/*/mlp/*``): ``*`` matches within one path
  component, ``?`` one character, ``[ab]``/``[!ab]`` a set; a whole ``**``
  component matches zero or more components (``**/kernel`` matches a top-level
  ``kernel`` too, as in pathlib's ``full_match``); ``**`` inside a component
  (``**embed**``) matches any characters, ``/`` included;
* a compiled regex (``re.compile(r'layers/\\d+/mlp/.*')``) or a string
  prefixed ``re:``: full match against the path;
* a list of selectors (strings or regexes): their union;
* ordered first-match rules ``[(pattern, value), ...]``: each leaf gets the
  value of the first rule whose pattern matches it (see :func:`resolve_rules`);
  as a plain selection, leaves whose value is ``None`` or ``False`` are
  excluded;
* a predicate ``(path, leaf) -> bool``;
* a mask pytree of booleans with the same structure as the tree.

A selector (or a rule) that matches nothing raises ``ValueError`` naming the
pattern and the closest paths: a typo never silently turns into a no-op.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import re
from typing import Any, Callable, Sequence, Union

import jax

from jaxparams.tree.paths import PyTree, flatten

__all__ = ["Selector", "compile_pattern", "select", "resolve_rules", "is_rules",
           "NoMatchError"]

Selector = Union[None, str, "re.Pattern[str]", Sequence[Any], Callable[[str, Any], bool], PyTree]


class NoMatchError(ValueError):
  """A selector or rule matched no leaf."""


def _segment_regex(seg: str) -> str:
  """One path component of a glob: ``*``, ``?``, ``[ab]``/``[!ab]``; ``**`` inside it crosses ``/``."""
  out, i = [], 0
  while i < len(seg):
    c = seg[i]
    if seg.startswith("**", i):
      out.append(".*")
      i += 2
      continue
    if c == "*":
      out.append("[^/]*")
    elif c == "?":
      out.append("[^/]")
    elif c == "[":
      start = i + 2 if seg.startswith("[!", i) else i + 1
      start += seg.startswith("]", start)  # a leading ']' is a member, as in fnmatch
      j = seg.find("]", start)
      if j < 0:
        out.append(re.escape(c))
      else:
        body = seg[i + 1:j]
        if body.startswith("!"):
          body = "^/" + body[1:]
        out.append(f"[{body}]")
        i = j
    else:
      out.append(re.escape(c))
    i += 1
  return "".join(out)


@functools.lru_cache(maxsize=1024)
def _glob_regex(glob: str) -> "re.Pattern[str]":
  """Glob -> regex matched against ``'/' + path``. A whole ``**`` component matches zero or more
  components (``**/kernel`` matches ``kernel`` and ``a/b/kernel``), as in pathlib and gitignore."""
  parts = ["(?:/[^/]+)*" if seg == "**" else "/" + _segment_regex(seg)
           for seg in glob.split("/")]
  return re.compile("".join(parts), re.DOTALL)


def compile_pattern(pattern: Any) -> Callable[[str], bool]:
  """Compiles a glob string, ``re:`` string or regex into a path predicate.

  Example:
    >>> m = compile_pattern('layers/*/mlp/*')
    >>> m('layers/3/mlp/kernel'), m('layers/3/attn/kernel')
    (True, False)
    >>> compile_pattern(r're:layers/\\d+/.*')('layers/10/x')
    True
    >>> [compile_pattern('**/kernel')(p) for p in ('kernel', 'a/b/kernel', 'a/kernel2')]
    [True, True, False]
  """
  if isinstance(pattern, re.Pattern):
    return lambda p: pattern.fullmatch(p) is not None
  if isinstance(pattern, str):
    if pattern.startswith("re:"):
      rx = re.compile(pattern[3:])
      return lambda p: rx.fullmatch(p) is not None
    rx = _glob_regex(pattern)
    return lambda p: rx.fullmatch("/" + p) is not None
  raise TypeError(f"Expected a glob string or a compiled regex, got {type(pattern).__name__}: {pattern!r}")


def _describe(pattern: Any) -> str:
  if isinstance(pattern, re.Pattern):
    return f"regex {pattern.pattern!r}"
  if isinstance(pattern, str) and pattern.startswith("re:"):
    return f"regex {pattern[3:]!r}"
  if isinstance(pattern, str):
    return f"glob {pattern!r}"
  return repr(pattern)


def _no_match(pattern: Any, paths: Sequence[str], what: str = "selector") -> NoMatchError:
  text = pattern.pattern if isinstance(pattern, re.Pattern) else str(pattern)
  near = difflib.get_close_matches(text, list(paths), n=5, cutoff=0.0)
  return NoMatchError(
      f"The {what} {_describe(pattern)} matches none of the {len(paths)} leaves. "
      f"Closest paths: {near}")


def is_rules(where: Any) -> bool:
  """True when ``where`` is a list of ``(pattern, value)`` rules."""
  return (isinstance(where, (list, tuple)) and len(where) > 0 and all(
      isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], (str, re.Pattern))
      for r in where))


def _is_pattern_list(where: Any) -> bool:
  return (isinstance(where, (list, tuple)) and len(where) > 0 and
          all(isinstance(r, (str, re.Pattern)) for r in where))


def resolve_rules(tree: PyTree | dict[str, Any], rules: Sequence[tuple[Any, Any]], *,
                  strict: bool = True, flat: bool = False) -> dict[str, Any]:
  """Assigns each leaf the value of the first rule whose pattern matches it.

  Args:
    tree: a pytree, or an already flat ``{path: leaf}`` dict when ``flat``.
    rules: ordered ``(pattern, value)`` pairs; patterns as in
      :func:`compile_pattern`.
    strict: raise if a rule claims no leaf (it matches nothing, or every leaf
      it matches was claimed by an earlier rule).
    flat: ``tree`` is already a flat dict.

  Returns:
    ``{path: value}`` for every leaf claimed by some rule, in tree order.

  Raises:
    NoMatchError: in strict mode, for a rule that claims no leaf.

  Example:
    >>> resolve_rules({'a': {'w': 1, 'b': 2}}, [('*/b', 'bias'), ('**', 'w')])
    {'a/b': 'bias', 'a/w': 'w'}
  """
  leaves = tree if flat else flatten(tree)
  paths = list(leaves)
  matchers = [compile_pattern(p) for p, _ in rules]
  claimed = [0] * len(rules)
  out: dict[str, Any] = {}
  for path in paths:
    for i, m in enumerate(matchers):
      if m(path):
        out[path] = rules[i][1]
        claimed[i] += 1
        break
  if strict:
    for i, n in enumerate(claimed):
      if n == 0:
        pattern = rules[i][0]
        if any(matchers[i](p) for p in paths):
          raise NoMatchError(
              f"Rule {i} ({_describe(pattern)}) only matches leaves already claimed by "
              f"earlier rules; reorder or remove it.")
        raise _no_match(pattern, paths, what=f"rule {i}")
  return out


def select(tree: PyTree | dict[str, Any], where: Selector = None, *,
           flat: bool = False, strict: bool = True) -> list[str]:
  """Returns the paths of the leaves chosen by ``where``, in tree order.

  Args:
    tree: a pytree, or a flat ``{path: leaf}`` dict when ``flat``.
    where: a selector (see the module docstring).
    flat: ``tree`` is already flat.
    strict: raise :class:`NoMatchError` when nothing is selected.

  Returns:
    The selected paths.

  Example:
    >>> t = {'layers': [{'mlp': {'kernel': 1}, 'attn': {'kernel': 2}}]}
    >>> select(t, 'layers/*/mlp/*')
    ['layers/0/mlp/kernel']
    >>> select(t, lambda path, leaf: leaf > 1)
    ['layers/0/attn/kernel']
  """
  leaves = tree if flat else flatten(tree)
  paths = list(leaves)
  if where is None:
    return paths
  if isinstance(where, (str, re.Pattern)):
    m = compile_pattern(where)
    chosen = [p for p in paths if m(p)]
  elif is_rules(where):
    values = resolve_rules(leaves, where, flat=True, strict=strict)
    chosen = [p for p in paths if values.get(p) not in (None, False)]
  elif _is_pattern_list(where):
    ms = [compile_pattern(w) for w in where]
    for w, m in zip(where, ms):
      if strict and not any(m(p) for p in paths):
        raise _no_match(w, paths)
    chosen = [p for p in paths if any(m(p) for m in ms)]
  elif callable(where) and not _is_pytree_container(where):
    chosen = [p for p in paths if bool(where(p, leaves[p]))]
  else:
    mask = flatten(where)
    missing = [p for p in paths if p not in mask]
    if missing:
      raise ValueError(
          f"The mask tree lacks {len(missing)} leaves of the parameter tree, e.g. {missing[:3]}; "
          "it must have the same structure.")
    chosen = [p for p in paths if bool(mask[p])]
  if strict and not chosen:
    raise _no_match(where if isinstance(where, (str, re.Pattern)) else
                    getattr(where, "__name__", type(where).__name__), paths)
  return chosen


def _is_pytree_container(x: Any) -> bool:
  if isinstance(x, (dict, list, tuple)):
    return True
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return True
  leaves, treedef = jax.tree_util.tree_flatten(x)
  return not (treedef.num_leaves == 1 and leaves[0] is x)
