"""Every notebook under notebooks/ executes top to bottom (none can rot)."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").iterdir()
                   if p.suffix == ".ipynb" or (p.suffix == ".py" and p.name[0].isdigit()))


def test_there_are_notebooks():
  assert NOTEBOOKS, "notebooks/ should hold at least the tour"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
  import jupytext
  import nbclient
  import nbformat
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("JAXPARAMS_NOTEBOOK_TMP", str(tmp_path))
  nb = jupytext.read(path) if path.suffix == ".py" else nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
