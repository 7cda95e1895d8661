"""The one reader of YAML recipe files (merge recipes, ``--params`` files): strict and bounded.

PyYAML's ``safe_load`` builds aliases as shared references, so a 600-byte file of nested
aliases (a "billion laughs" bomb) is cheap to load but expands to billions of values as soon
as anything walks it (validation, copying, printing). This reader refuses such a file before
anything walks it:

* the file size is checked (``stat``) before it is read (``max_bytes``);
* the YAML is *composed* (nodes, aliases kept as references), then the size of the document
  with every alias expanded is counted in one pass over the distinct nodes (memoized); more than
  ``max_values`` values, more than ``max_depth`` levels of nesting, or a recursive alias is a
  ``ValueError``;
* only JSON-like values come back: mappings with string keys (no duplicate keys), lists,
  strings, integers, floats, booleans and null; YAML timestamps, binary, sets and other tags
  are refused naming where they are.

Errors name the file and the place (``models[1].parameters.weight``).

Example:
  >>> import os, tempfile
  >>> p = os.path.join(tempfile.mkdtemp(), 'r.yml')
  >>> _ = open(p, 'w').write('merge_method: linear\\nmodels: [{model: a}, {model: b}]\\n')
  >>> read_recipe_yaml(p)['models'][1]
  {'model': 'b'}
  >>> bomb = 'a: &a [x, x, x, x, x, x, x, x, x, x]\\n' + ''.join(
  ...     f'{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\\n'
  ...     for p, c in zip('abcdefg', 'bcdefgh'))
  >>> _ = open(p, 'w').write(bomb)
  >>> read_recipe_yaml(p)
  Traceback (most recent call last):
  ...
  ValueError: .../r.yml: recipe expands to more than 100000 values (aliases counted as copies); refusing it (a YAML alias bomb?).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from jaxparams.io.text_files import read_text

__all__ = ["read_recipe_yaml", "parse_recipe_yaml", "MAX_RECIPE_BYTES", "MAX_RECIPE_VALUES",
           "MAX_RECIPE_DEPTH"]

#: Default size limit of a recipe file (bytes); real recipes are a few KiB.
MAX_RECIPE_BYTES = 2**20
#: Default limit of values in the document once aliases are expanded.
MAX_RECIPE_VALUES = 100_000
#: Default nesting limit.
MAX_RECIPE_DEPTH = 32

_TAG = "tag:yaml.org,2002:"
_MAX_NUMBER_CHARS = 100  # far beyond float64 precision; 10**400 is not a weight
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}


def _mark(node: yaml.Node) -> str:
  m = node.start_mark
  return f"line {m.line + 1}, column {m.column + 1}"


def _expanded_size(root: yaml.Node, where: str, max_values: int, max_depth: int) -> int:
  """Values in the document with aliases expanded; refuses cycles, depth and count overruns."""
  memo: dict[int, int] = {}
  on_path: set[int] = set()

  def visit(node: yaml.Node, depth: int) -> int:
    if depth > max_depth:
      raise ValueError(f"{where}: nested deeper than {max_depth} levels at {_mark(node)}.")
    key = id(node)
    if key in memo:
      return memo[key]
    if key in on_path:
      raise ValueError(f"{where}: recursive alias at {_mark(node)}; a recipe must be a tree.")
    if isinstance(node, yaml.ScalarNode):
      return 1
    on_path.add(key)
    children = (node.value if isinstance(node, yaml.SequenceNode)
                else [c for kv in node.value for c in kv])
    total = 1
    for child in children:
      total += visit(child, depth + 1)
      if total > max_values:
        raise ValueError(f"{where}: recipe expands to more than {max_values} values (aliases "
                         "counted as copies); refusing it (a YAML alias bomb?).")
    on_path.discard(key)
    memo[key] = total
    return total

  return visit(root, 0)


_QUOTED_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\n]|\'\')*\'|(?:^|(?<=\s))#[^\n]*',
                                re.MULTILINE)


def _check_depth(text: str, where: str, max_depth: int) -> None:
  """Refuses nesting deeper than ``max_depth``: flow brackets counted on the raw text first
  (PyYAML's scanner takes seconds on thousands of nested ``[``), then the parser's events."""
  brackets = re.findall(r"[\[\]{}]", _QUOTED_OR_COMMENT.sub("", text))
  if brackets:
    steps = np.fromiter((1 if b in "[{" else -1 for b in brackets), np.int64, len(brackets))
    if int(np.cumsum(steps).max()) > max_depth:
      raise ValueError(f"{where}: nested deeper than {max_depth} levels.")
  depth = 0
  for event in yaml.parse(text, Loader=yaml.SafeLoader):
    if isinstance(event, yaml.CollectionStartEvent):
      depth += 1
      if depth > max_depth:
        raise ValueError(f"{where}: nested deeper than {max_depth} levels at "
                         f"{_mark(event)}.")
    elif isinstance(event, yaml.CollectionEndEvent):
      depth -= 1


def _check_types(node: yaml.Node, where: str, path: str) -> None:
  """Only JSON-like tags; string keys; no duplicate keys (merge keys ``<<`` allowed)."""
  here = path or "top level"
  if isinstance(node, yaml.ScalarNode):
    if node.tag not in _SCALAR_TAGS:
      raise ValueError(f"{where}: {here}: unsupported YAML value {node.value!r} (tag "
                       f"{node.tag}) at {_mark(node)}; expected a string, number, boolean "
                       "or null.")
    if node.tag in (_TAG + "int", _TAG + "float") and len(node.value) > _MAX_NUMBER_CHARS:
      raise ValueError(f"{where}: {here}: a number of {len(node.value)} characters at "
                       f"{_mark(node)}; at most {_MAX_NUMBER_CHARS} are accepted.")
    return
  if isinstance(node, yaml.SequenceNode):
    if node.tag != _TAG + "seq":
      raise ValueError(f"{where}: {here}: unsupported YAML tag {node.tag} at {_mark(node)}.")
    for i, child in enumerate(node.value):
      _check_types(child, where, f"{path}[{i}]")
    return
  if node.tag != _TAG + "map":
    raise ValueError(f"{where}: {here}: unsupported YAML tag {node.tag} (a set or ordered "
                     f"map?) at {_mark(node)}; expected a plain mapping.")
  seen: set[str] = set()
  for k, v in node.value:
    if k.tag == _TAG + "merge":
      _check_types(v, where, path)
      continue
    if not isinstance(k, yaml.ScalarNode) or k.tag != _TAG + "str":
      raise ValueError(f"{where}: {here}: mapping key at {_mark(k)} must be a string, found "
                       f"{k.value if isinstance(k, yaml.ScalarNode) else 'a ' + k.id} "
                       f"({k.tag.rsplit(':', 1)[-1]}).")
    if k.value in seen:
      raise ValueError(f"{where}: {here}: duplicate key {k.value!r} at {_mark(k)}.")
    seen.add(k.value)
    _check_types(v, where, f"{path}.{k.value}" if path else k.value)


def _check_floats(value: Any, where: str, path: str) -> None:
  if isinstance(value, float) and not math.isfinite(value):
    raise ValueError(f"{where}: {path or 'top level'}: value {value!r} is not finite.")
  if isinstance(value, dict):
    for k, v in value.items():
      _check_floats(v, where, f"{path}.{k}" if path else str(k))
  elif isinstance(value, list):
    for i, v in enumerate(value):
      _check_floats(v, where, f"{path}[{i}]")


def parse_recipe_yaml(text: str, *, where: str = "recipe", max_values: int = MAX_RECIPE_VALUES,
                      max_depth: int = MAX_RECIPE_DEPTH) -> Any:
  """Parses YAML text strictly (see the module docstring); ``where`` names it in errors.

  Example:
    >>> parse_recipe_yaml('a: 1\\na: 2\\n', where='r.yml')
    Traceback (most recent call last):
    ...
    ValueError: r.yml: top level: duplicate key 'a' at line 2, column 1.
    >>> parse_recipe_yaml('when: 2024-01-01', where='r.yml')
    Traceback (most recent call last):
    ...
    ValueError: r.yml: when: unsupported YAML value '2024-01-01' (tag tag:yaml.org,2002:timestamp) at line 1, column 7; expected a string, number, boolean or null.
  """
  try:
    _check_depth(text, where, max_depth)  # events, not recursion: deep nesting is refused fast
    root = yaml.compose(text, Loader=yaml.SafeLoader)
  except RecursionError:
    raise ValueError(f"{where}: YAML nested too deeply.") from None
  except yaml.YAMLError as e:
    raise ValueError(f"{where}: invalid YAML ({' '.join(str(e).split())}).") from None
  if root is None:
    return None
  _expanded_size(root, where, max_values, max_depth)
  _check_types(root, where, "")
  loader = yaml.SafeLoader("")
  try:
    value = loader.construct_document(root)
  except ValueError as e:  # e.g. an integer of more than 4,300 digits
    raise ValueError(f"{where}: a value cannot be read ({' '.join(str(e).split())}).") from None
  except yaml.YAMLError as e:
    raise ValueError(f"{where}: invalid YAML ({' '.join(str(e).split())}).") from None
  finally:
    loader.dispose()
  _check_floats(value, where, "")
  return value


def read_recipe_yaml(path: str | Path, *, what: str = "recipe",
                     max_bytes: int = MAX_RECIPE_BYTES, max_values: int = MAX_RECIPE_VALUES,
                     max_depth: int = MAX_RECIPE_DEPTH) -> Any:
  """Reads a YAML recipe file strictly, with its size and alias expansion bounded.

  Args:
    path: the YAML file.
    what: what it is, for messages.
    max_bytes: refuse larger files (checked before reading).
    max_values: refuse documents with more values once aliases are expanded.
    max_depth: refuse deeper nesting.

  Returns:
    The document: dicts (string keys), lists, str, int, float, bool, None.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a regular file, too large, not UTF-8, invalid YAML, an alias bomb, a
      recursive alias, too deep, duplicate keys, non-string keys, non-JSON values, NaN/Inf.
  """
  path = Path(path)
  try:
    st = path.stat()
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: no such {what} file.") from None
  if not os.path.isfile(path):
    raise ValueError(f"{path}: {what} is not a regular file.")
  if st.st_size > max_bytes:
    raise ValueError(f"{path}: {what} is {st.st_size} bytes, more than the limit of {max_bytes} "
                     "bytes.")
  text = read_text(path, what=what)
  if len(text.encode("utf-8", "surrogatepass")) > max_bytes:  # grew since stat
    raise ValueError(f"{path}: {what} is larger than the limit of {max_bytes} bytes.")
  return parse_recipe_yaml(text, where=str(path), max_values=max_values, max_depth=max_depth)
