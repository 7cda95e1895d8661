"""The floors of the package hold: import-linter's contracts (pyproject.toml) and no import cycle.

``kernels/`` is installed as ``jaxparams.kernels`` from the repository's top level, so the tests
stage a copy of the sources (``jaxparams/`` with ``kernels/`` in place, ``.py`` files only) and
analyse that with import-linter and its graph library grimp, each in a subprocess (this process
has already imported the real ``jaxparams``, which grimp would find instead).

Each check is also shown to fail: an upward import and a cycle injected into a second staged copy
are reported.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

try:
  import tomllib
except ImportError:  # Python 3.10
  import tomli as tomllib

import importlinter  # noqa: F401  (the test extra installs import-linter and grimp)

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"

# Cycles tolerated while they are being broken: each entry is the exact set of modules of one
# strongly connected component. Empty: jaxparams/ and kernels/ have none.
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()

_GRAPH = """
import json, sys, grimp
g = grimp.build_graph("jaxparams", cache_dir=None)
print(json.dumps({m: sorted(g.find_modules_directly_imported_by(m)) for m in sorted(g.modules)}))
"""


def _stage(dest: pathlib.Path) -> pathlib.Path:
  """``dest/jaxparams`` = the package's sources with ``kernels/`` as ``jaxparams/kernels``."""
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data", "*.json", "*.jsonl")
  shutil.copytree(ROOT / "jaxparams", dest / "jaxparams", ignore=ignore)
  shutil.copytree(ROOT / "kernels", dest / "jaxparams" / "kernels", ignore=ignore)
  shutil.copy(PYPROJECT, dest / "pyproject.toml")
  return dest


def _run(code: str, staged: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code, *args], cwd=staged, capture_output=True,
                        text=True, env={"PYTHONPATH": str(staged), "PATH": "/usr/bin:/bin",
                                        "PYTHONDONTWRITEBYTECODE": "1"}, timeout=300)


def _lint(staged: pathlib.Path) -> subprocess.CompletedProcess:
  code = ("import sys; from importlinter.cli import lint_imports; "
          "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))")
  return _run(code, staged)


def _graph(staged: pathlib.Path) -> dict[str, list[str]]:
  out = _run(_GRAPH, staged)
  assert out.returncode == 0, out.stderr
  graph = json.loads(out.stdout)
  assert "jaxparams.kernels.dispatch" in graph, "kernels/ must be in the analysed graph"
  return graph


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan, iterative).

  Example:
    >>> cycles({'a': ['b'], 'b': ['a', 'c'], 'c': []})
    [['a', 'b']]
  """
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  on_stack: set[str] = set()
  stack: list[str] = []
  found: list[list[str]] = []
  counter = 0
  for root in sorted(graph):
    if root in index:
      continue
    work = [(root, iter(graph.get(root, ())))]
    index[root] = low[root] = counter
    counter += 1
    stack.append(root)
    on_stack.add(root)
    while work:
      v, children = work[-1]
      for w in children:
        if w not in graph:
          continue
        if w not in index:
          index[w] = low[w] = counter
          counter += 1
          stack.append(w)
          on_stack.add(w)
          work.append((w, iter(graph.get(w, ()))))
          break
        if w in on_stack:
          low[v] = min(low[v], index[w])
      else:
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[v])
        if low[v] == index[v]:
          comp = []
          while True:
            w = stack.pop()
            on_stack.discard(w)
            comp.append(w)
            if w == v:
              break
          if len(comp) > 1:
            found.append(sorted(comp))
  return sorted(found)


def _one_loop(graph: dict[str, list[str]], comp: list[str]) -> list[str]:
  """A shortest import loop through the first module of ``comp`` (to print)."""
  members = set(comp)
  start = comp[0]
  prev: dict[str, str] = {}
  frontier = [start]
  while frontier:
    nxt = []
    for v in frontier:
      for w in graph.get(v, ()):
        if w == start:
          path = [v]
          while path[-1] != start:
            path.append(prev[path[-1]])
          return [start, *reversed(path[:-1]), start]
        if w in members and w not in prev:
          prev[w] = v
          nxt.append(w)
    frontier = nxt
  return comp


def _describe(graph, comps) -> str:
  return "\n".join(f"  {len(c)} modules: {' -> '.join(_one_loop(graph, c))}\n    ({', '.join(c)})"
                   for c in comps)


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> pathlib.Path:
  return _stage(tmp_path_factory.mktemp("layering"))


@pytest.fixture(scope="module")
def contracts() -> list[dict]:
  return tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]


def test_import_linter_contracts_are_kept(staged):
  out = _lint(staged)
  assert out.returncode == 0, f"lint-imports failed:\n{out.stdout}\n{out.stderr}"
  assert "0 broken" in out.stdout and "BROKEN" not in out.stdout


def test_no_import_cycles_in_jaxparams_and_kernels(staged):
  graph = _graph(staged)
  found = cycles(graph)
  new = [c for c in found if frozenset(c) not in KNOWN_CYCLES]
  assert not new, "import cycles (strongly connected components):\n" + _describe(graph, new)
  stale = [sorted(k) for k in KNOWN_CYCLES if list(sorted(k)) not in found]
  assert not stale, f"KNOWN_CYCLES lists cycles that are gone; delete them: {stale}"


def _layer_modules(layer: str) -> list[tuple[str, bool]]:
  """``[(module, optional)]`` of one layer string of a layers contract."""
  parts = [p.strip() for p in layer.replace("|", ":").split(":")]
  return [(p.strip("()"), p.startswith("(")) for p in parts if p]


def _subpackages() -> list[str]:
  names = [f"jaxparams.{p.name}" for p in sorted((ROOT / "jaxparams").iterdir())
           if (p / "__init__.py").is_file()]
  return names + ["jaxparams.kernels"]


def test_every_subpackage_is_named_in_the_floors(contracts):
  floors = next(c for c in contracts if c["id"] == "floors")
  named = {m for layer in floors["layers"] for m, _ in _layer_modules(layer)}
  missing = [p for p in _subpackages() if p not in named]
  assert not missing, (f"{missing}: every sub-package of jaxparams must sit on a floor of the "
                       "'floors' contract in pyproject.toml (a new area: the areas floor and the "
                       "'areas' independence contract)")


def test_every_existing_area_is_in_the_independence_contract(contracts):
  floors = next(c for c in contracts if c["id"] == "floors")
  areas = next(c for c in contracts if c["id"] == "areas")
  on_floor = [m for m, _ in _layer_modules(floors["layers"][1])]
  existing = [m for m in on_floor if (ROOT / m.replace(".", "/") / "__init__.py").is_file()]
  assert sorted(existing) == sorted(areas["modules"]), (
      f"the 'areas' independence contract must list exactly the areas that exist: "
      f"{sorted(existing)} (pyproject.toml); it lists {sorted(areas['modules'])}")


def test_the_checks_fail_on_an_upward_import_and_a_cycle(tmp_path):
  """An upward import (io -> merge) and a cycle (tree <-> its new sibling) are both reported."""
  staged = _stage(tmp_path)
  (staged / "jaxparams" / "io" / "_upward.py").write_text("import jaxparams.merge.registry\n")
  (staged / "jaxparams" / "tree" / "_loop_a.py").write_text("from jaxparams.tree import _loop_b\n")
  (staged / "jaxparams" / "tree" / "_loop_b.py").write_text("from jaxparams.tree import _loop_a\n")
  out = _lint(staged)
  assert out.returncode != 0
  assert "jaxparams.io._upward -> jaxparams.merge.registry" in out.stdout, out.stdout
  graph = _graph(staged)
  found = cycles(graph)
  assert ["jaxparams.tree._loop_a", "jaxparams.tree._loop_b"] in found
  assert "jaxparams.tree._loop_a -> jaxparams.tree._loop_b -> jaxparams.tree._loop_a" in \
      _describe(graph, [["jaxparams.tree._loop_a", "jaxparams.tree._loop_b"]])


def test_optional_areas_may_land(tmp_path):
  """``flash``/``predict`` are optional floors: the contracts hold with and without them."""
  staged = _stage(tmp_path)
  for name in ("flash", "predict"):
    pkg = staged / "jaxparams" / name
    if not pkg.exists():
      pkg.mkdir()
      (pkg / "__init__.py").write_text("import jaxparams.transform\n")
  out = _lint(staged)
  assert out.returncode == 0, out.stdout
