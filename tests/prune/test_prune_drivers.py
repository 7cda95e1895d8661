"""Pruning records through both drivers: tree (jit-able) and streaming over a real checkpoint."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.prune import records


@pytest.fixture(scope="module")
def minilm():
  _, params, _, _ = jp.models.load_minilm()
  return params


def test_tree_magnitude_hits_target_per_leaf_and_keeps_embeddings(minilm):
  pruned, report = jp.prune.prune_tree(minilm, "magnitude", sparsity=0.5)
  assert len(report) == 6 * 6                      # q, k, v, o, intermediate, output per layer
  assert all(abs(s - 0.5) <= 1e-3 for s in report.values())
  flat, orig = jp.tree.flatten(pruned), jp.tree.flatten(minilm)
  for p in orig:
    if p not in report:
      assert flat[p] is orig[p] or bool(jnp.array_equal(flat[p], orig[p])), p


def test_tree_two_four_every_group(minilm):
  pruned, report = jp.prune.prune_tree(minilm, "magnitude", pattern="2:4",
                                       where="layers_0/**/kernel")
  for p in report:
    w = np.asarray(jp.tree.flatten(pruned)[p])
    nz = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(axis=1)
    assert (nz == 2).all(), p


def test_calibrated_records_match_direct_functions():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 16)).astype(np.float32)
  w = rng.normal(size=(16, 8)).astype(np.float32)
  xtx = jnp.asarray(x.T @ x)
  params = {"l": {"kernel": jnp.asarray(w)}}
  out, _ = jp.prune.prune_tree(params, "wanda", stats={"l/kernel": xtx}, sparsity=0.5)
  keep = jp.prune.wanda_mask(jnp.asarray(w), jnp.diagonal(xtx), sparsity=0.5)
  chex.assert_trees_all_equal(out["l"]["kernel"], jnp.where(keep, w, 0.0))
  out, _ = jp.prune.prune_tree(params, "sparsegpt", stats={"l/kernel": xtx}, sparsity=0.5,
                               block_size=8)
  ref, _ = jp.prune.sparsegpt(jnp.asarray(w), xtx, sparsity=0.5, block_size=8)
  chex.assert_trees_all_equal(out["l"]["kernel"], ref)
  with pytest.raises(ValueError, match="needs calibration statistics"):
    jp.prune.prune_tree(params, "wanda")


def test_records_errors_name_method_field_and_tensor():
  with pytest.raises(ValueError, match="valid names: magnitude, random, sparsegpt, wanda"):
    jp.prune.prune_tree({"w": jnp.ones((4, 4))}, "obs")
  with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['sparsty'\]"):
    jp.prune.prune_tree({"w": jnp.ones((4, 4))}, "magnitude", sparsty=0.5)
  with pytest.raises(ValueError, match="pattern must look like"):
    records.MagnitudeConfig(pattern="2-4")
  bad = {"dense": {"kernel": jnp.ones((4, 4)).at[0, 0].set(jnp.nan)}}
  with pytest.raises(ValueError, match="dense/kernel.*NaN"):
    jp.prune.prune_tree(bad, "magnitude")
  with pytest.raises(ValueError, match="matches nothing|NoMatch|no leaf|selector"):
    jp.prune.prune_tree({"w": jnp.ones((4, 4))}, "magnitude", where="nothing/*")


def test_tree_driver_jit_and_vmap_over_inputs():
  w = jax.random.normal(jax.random.key(0), (3, 8, 4))
  f = jax.jit(jax.vmap(lambda x: jp.prune.prune_tree({"dense": {"kernel": x}}, "magnitude",
                                                     sparsity=0.25)[0]["dense"]["kernel"]))
  out = f(w)
  assert [int((o == 0).sum()) for o in out] == [8, 8, 8]


def test_stream_checkpoint_prunes_hf_weights_along_inputs(tmp_path):
  src = jp.models.minilm_path()
  out = tmp_path / "pruned"
  summary = jp.prune.prune_checkpoint(src, out, "magnitude", pattern="2:4")
  assert len(summary["sparsity"]) == 36
  with jp.io.open_checkpoint(src) as a, jp.io.open_checkpoint(out) as b:
    assert sorted(a.names()) == sorted(b.names())
    for n in a.names():
      x, y = np.asarray(a.read(n)), np.asarray(b.read(n))
      if n in summary["sparsity"]:
        nz = (y != 0).reshape(y.shape[0], y.shape[1] // 4, 4).sum(-1)   # [out, in/4]
        assert (nz == 2).all(), n
        assert np.array_equal(y[y != 0], x[y != 0])
      else:
        assert np.array_equal(x, y), n
  assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
  # the tree driver on the Flax tree gives the same weights (kernel = weight^T)
  _, params, _, _ = jp.models.load_minilm()
  tree_pruned, _ = jp.prune.prune_tree(params, "magnitude", pattern="2:4",
                                       where="layers_0/attn/query/kernel")
  with jp.io.open_checkpoint(out) as b:
    hf = np.asarray(b.read("encoder.layer.0.attention.self.query.weight"))
  np.testing.assert_array_equal(np.asarray(jp.tree.flatten(tree_pruned)["layers_0/attn/query/kernel"]),
                                hf.T)
  with pytest.raises(FileExistsError):
    jp.prune.prune_checkpoint(src, out, "magnitude")


def test_cli_prune_two_four_and_errors(tmp_path, capsys):
  from jaxparams.cli.main import main
  out = tmp_path / "p24"
  assert main(["prune", str(jp.models.minilm_path()), str(out), "--pattern", "2:4",
               "--where", r"encoder\.layer\.0\..*\.weight"]) == 0
  assert "6 weights pruned by magnitude, mean sparsity 0.5000" in capsys.readouterr().out
  assert main(["prune", str(jp.models.minilm_path()), str(tmp_path / "x"), "--sparsity",
               "1.5"]) == 2
  assert "sparsity" in capsys.readouterr().err
  assert main(["prune", str(jp.models.minilm_path()), str(tmp_path / "y"), "--where",
               "nothing_here"]) == 2
  assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_wanda_on_tiny_llama_loads_back(tmp_path, capsys):
  from jaxparams.cli.main import main
  import shutil
  from pathlib import Path
  from tokenizers import Tokenizer, models, pre_tokenizers
  src = tmp_path / "llama_tiny"
  shutil.copytree(Path(__file__).parents[1] / "fixtures" / "llama_tiny", src)
  words = "[PAD] [UNK] sentence number about pruning weights 0 1 2 3 4 5 6 7".split()
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(src / "tokenizer.json"))
  text = tmp_path / "calib.txt"
  text.write_text("\n".join(f"sentence number {i} about pruning weights" for i in range(8)))
  out = tmp_path / "wanda"
  assert main(["prune", str(src), str(out), "--method", "wanda", "--pattern", "2:4",
               "--calibration", str(text)]) == 0, capsys.readouterr().err
  _, params, _ = jp.models.from_hf(out)
  for p, w in jp.tree.flatten(params).items():
    if jp.prune.default_prune_where(p, w):
      nz = (np.asarray(w) != 0).reshape(w.shape[0] // 4, 4, -1).sum(1)
      assert (nz == 2).all(), p
  assert main(["prune", str(src), str(tmp_path / "x"), "--method", "sparsegpt"]) == 2
  assert "--calibration" in capsys.readouterr().err
