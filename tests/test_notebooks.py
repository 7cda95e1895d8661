"""Every notebook under notebooks/ executes top to bottom, draws its figures, and is stored executed.

Notebooks are jupytext ``.py`` files (diffable sources). Executed copies with their outputs
(figures included) are stored in ``notebooks/executed/`` so a reader sees the plots without
running anything; this test re-executes each source and fails when the stored copy's code is
out of date. Regenerate the stored copies with::

  JAXPARAMS_STORE_NOTEBOOKS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_notebooks.py
"""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").iterdir()
                   if p.suffix == ".ipynb" or (p.suffix == ".py" and p.name[0].isdigit()))
EXECUTED = ROOT / "notebooks" / "executed"
STORE = os.environ.get("JAXPARAMS_STORE_NOTEBOOKS") == "1"
# A new figure: plt.subplots(...) or plt.figure(...) in the source.
FIGURE_CALL = re.compile(r"\bplt\.(subplots|figure)\(")


def _code(nb) -> list[str]:
  return [c.source.strip() for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
  assert NOTEBOOKS, "notebooks/ should hold at least the tour"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_draws_its_figures(path, tmp_path, monkeypatch, test_compile_cache_env):
  import jupytext
  import nbclient
  import nbformat
  # The inline backend (what a reader's Jupyter uses) turns each figure into a PNG output.
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  monkeypatch.setenv("JAXPARAMS_NOTEBOOK_TMP", str(tmp_path))
  for name, value in test_compile_cache_env.items():  # the kernel compiles into the tests' cache
    monkeypatch.setenv(name, value)
  nb = jupytext.read(path) if path.suffix == ".py" else nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  figures = [o for o in outputs if "image/png" in o.get("data", {})]
  expected = len(FIGURE_CALL.findall(path.read_text()))
  assert len(figures) == expected, f"{path.name}: {len(figures)} figures drawn, {expected} created"
  for fig in figures:
    assert len(fig["data"]["image/png"]) > 1000  # a real PNG (base64), not an empty canvas
  stored = EXECUTED / (path.stem + ".ipynb")
  if STORE:
    EXECUTED.mkdir(exist_ok=True)
    nbformat.write(nb, stored)
  assert stored.is_file(), f"{stored} missing: regenerate (see this file's docstring)"
  assert _code(nbformat.read(stored, as_version=4)) == _code(nb), (
      f"{stored.name} is out of date with {path.name}: regenerate (see this file's docstring)")
