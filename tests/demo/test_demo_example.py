"""``jaxparams demo --example DIR`` then ``jaxparams merge DIR/recipe.yml DIR/merged``, end to end."""

import numpy as np
import pytest

import jaxparams as jp
from jaxparams.cli.main import main
from jaxparams.demo import example


def test_example_then_merge_in_one_line(tmp_path, monkeypatch, capsys):
  ex = tmp_path / "ex"
  assert main(["demo", "--example", str(ex)]) == 0
  assert f"jaxparams merge {ex / 'recipe.yml'} {ex / 'merged'}" in capsys.readouterr().out
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)  # the recipe's relative paths resolve from its own folder
  assert main(["merge", str(ex / "recipe.yml"), str(ex / "merged")]) == 0
  _, merged, _ = jp.models.from_hf(ex / "merged")
  _, base, _ = jp.models.from_hf(ex / example.BASE)
  fts = [jp.models.from_hf(ex / name)[1] for name in example.FINE_TUNES]
  want = jp.merge.ties(base, fts, weights=[0.6, 0.4], density=0.5)  # the recipe, in the tree API
  got, want = jp.tree.flatten(merged), jp.tree.flatten(want)
  assert sorted(got) == sorted(want)
  for path in want:
    np.testing.assert_allclose(np.asarray(got[path]), np.asarray(want[path]), rtol=1e-6,
                               atol=1e-7, err_msg=path)
  # the merge really moved away from the base
  assert not np.allclose(np.asarray(got["norm/scale"]), np.asarray(jp.tree.flatten(base)["norm/scale"]))


def test_example_refuses_an_existing_folder(tmp_path, capsys):
  (tmp_path / "ex").mkdir()
  assert main(["demo", "--example", str(tmp_path / "ex")]) == 2
  assert "already exists" in capsys.readouterr().err
