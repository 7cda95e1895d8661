"""Glob selectors against an independent segment-by-segment reference (pathlib semantics).

The reference splits pattern and path on ``/``: a ``**`` component matches zero
or more whole components, every other component is matched by
``fnmatch.fnmatchcase`` (``*``, ``?``, ``[ab]``, ``[!ab]`` inside one
component) -- the rule of ``pathlib.PurePath.full_match`` (Python 3.13),
gitignore and globstar shells. It shares no code with the regex translation.
"""

import fnmatch

import jax.numpy as jnp
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxparams as jp
from jaxparams.tree.select import compile_pattern


def reference_match(pattern: str, path: str) -> bool:
  def rec(ps: tuple[str, ...], xs: tuple[str, ...]) -> bool:
    if not ps:
      return not xs
    if ps[0] == "**":
      return any(rec(ps[1:], xs[i:]) for i in range(len(xs) + 1))
    return bool(xs) and fnmatch.fnmatchcase(xs[0], ps[0]) and rec(ps[1:], xs[1:])
  return rec(tuple(pattern.split("/")), tuple(path.split("/")))


_name = st.text("ab_0", min_size=1, max_size=3)
_path = st.lists(_name, min_size=1, max_size=5).map("/".join)
_piece = st.sampled_from(["a", "b", "_", "0", "*", "?", "[ab]", "[!a]"])
_component = st.one_of(st.just("**"), st.lists(_piece, min_size=1, max_size=3).map("".join))
# A ``**`` inside a component (``**embed**``) deliberately crosses ``/`` in jaxparams (tested
# separately), so the reference comparison keeps ``**`` to whole components.
_pattern = st.lists(_component, min_size=1, max_size=5).map("/".join).filter(
    lambda p: all(c == "**" or "**" not in c for c in p.split("/")))


@settings(max_examples=400, deadline=None)
@given(_pattern, st.lists(_path, min_size=1, max_size=6))
def test_glob_equals_segment_reference(pattern, paths):
  m = compile_pattern(pattern)
  assert [m(p) for p in paths] == [reference_match(pattern, p) for p in paths]


@settings(max_examples=200, deadline=None)
@given(st.lists(_name, min_size=0, max_size=4), _name)
def test_leading_globstar_matches_any_depth_including_zero(prefix, name):
  path = "/".join([*prefix, name])
  assert compile_pattern(f"**/{name}")(path)
  assert compile_pattern("**")(path)


def test_reference_agrees_with_known_cases():
  # independent sanity of the reference itself (pathlib 3.13 full_match results)
  cases = {("**/kernel", "kernel"): True, ("**/kernel", "a/b/kernel"): True,
           ("a/**/b", "a/b"): True, ("a/**/b", "a/x/y/b"): True, ("a/*", "a/x/y"): False,
           ("*", "a/b"): False, ("a/**", "a/x/y"): True, ("[!a]", "b"): True}
  for (pat, path), want in cases.items():
    assert reference_match(pat, path) is want, (pat, path)
    assert compile_pattern(pat)(path) is want, (pat, path)


def test_top_level_kernel_leaf_is_selected():
  """The reported bug: ``nnx.state(nnx.Linear(...))`` has a top-level ``kernel`` leaf."""
  tree = {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros(4)}
  assert jp.tree.select(tree, "**/kernel") == ["kernel"]
  out = jp.tree.map(lambda x: 2 * x, tree, where="**/kernel")
  assert float(out["kernel"][0, 0]) == 2.0 and float(out["bias"][0]) == 0.0


def test_inner_double_star_still_crosses_components():
  """``**embed**`` (used by steplaw/vocab_trim) keeps matching embeddings at any depth."""
  assert compile_pattern("**embed**")("model/embed_tokens/embedding")
  assert compile_pattern("**word_embeddings/embedding")("embeddings/word_embeddings/embedding")
