"""The editing registry: names, parameters from files and --set, the CLI, the atomic write."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams import io as jio
from jaxparams.cli.main import main as cli_main
from jaxparams.edit import checkpoint, ft, grace, methods, registry, targets, wise
from jaxparams.models import LlamaConfig


def test_names_params_classes_and_errors():
  assert registry.names() == ["alphaedit", "ft", "grace", "memit", "rome", "wise"]
  assert registry.checkpoint_names() == ["rome", "memit", "alphaedit"]
  classes = {n: registry.get(n).params for n in registry.names()}
  assert classes == {"rome": methods.RomeParams, "memit": methods.MemitParams,
                     "alphaedit": methods.AlphaEditParams, "ft": ft.FTParams,
                     "grace": grace.GraceParams, "wise": wise.WiseParams}
  for cls in classes.values():
    assert cls.__dataclass_params__.frozen
  with pytest.raises(ValueError, match=r"unknown edit method 'alphedit' \(did you mean "
                                       r"'alphaedit'\?\); valid names: alphaedit, ft"):
    registry.get("alphedit")
  with pytest.raises(ValueError, match=r"unknown parameter 'target.v_rl' \(did you mean "
                                       r"'target.v_lr'\?\); valid parameters: fp64, "):
    registry.make_params("memit", {"target.v_rl": 0.1})
  with pytest.raises(ValueError, match=r"parameter nullspace_threshold='x' should be a float"):
    registry.make_params("alphaedit", {"nullspace_threshold": "x"})
  with pytest.raises(ValueError, match="batch_size"):   # the dataclass's own validation
    registry.make_params("ft", {"batch_size": 0})


def test_every_field_settable_nested_or_dotted():
  a = registry.make_params("alphaedit", {"target": {"v_num_grad_steps": 7}, "L2": 3,
                                         "target.clamp_norm_factor": 2.0})
  assert a == methods.AlphaEditParams(
      target=targets.TargetParams(clamp_norm_factor=2.0, v_num_grad_steps=7, v_lr=0.5), L2=3.0)
  for name in registry.names():
    rec = registry.get(name)
    for field in rec.param_names():      # each one reachable by its dotted name
      v = rec.defaults()
      for part in field.split("."):
        v = getattr(v, part)
      assert rec.make_params({field: v}) == rec.defaults()
  w = registry.make_params("wise", registry.parse_assignments(["act_margin=[1, 2, 3]",
                                                              "in_scope=target"]))
  assert w.act_margin == (1.0, 2.0, 3.0) and w.in_scope == "target"


def test_checkpoint_defaults_are_the_former_hard_coded_ones():
  # edit_checkpoint used to build these by hand; the records' defaults are the same objects.
  tp = targets.TargetParams
  assert checkpoint.edit_params("rome") == methods.RomeParams(target=tp(fact_token="subject_last"))
  assert checkpoint.edit_params("memit") == methods.MemitParams(
      target=tp(clamp_norm_factor=0.75, v_num_grad_steps=25))
  # AlphaEdit's targets: v_lr 0.5 (the reference's GPT-2-XL/GPT-J value; was its Llama3-8B 0.1).
  assert checkpoint.edit_params("alphaedit", fact_token="last") == methods.AlphaEditParams(
      target=tp(fact_token="last", clamp_norm_factor=0.75, v_num_grad_steps=25, v_lr=0.5))


def test_params_file_then_set(tmp_path):
  f = tmp_path / "p.yaml"
  f.write_text("mom2_update_weight: 5000\ntarget:\n  v_num_grad_steps: 10\n")
  hp = checkpoint.edit_params("memit", params_file=f, assignments=["target.v_num_grad_steps=3"])
  assert (hp.mom2_update_weight, hp.target.v_num_grad_steps) == (5000.0, 3)
  j = tmp_path / "p.json"
  j.write_text(json.dumps({"nullspace_threshold": 0.1, "lamda": 1}))
  with pytest.raises(ValueError, match=r"p\.json: edit method 'alphaedit': unknown parameter "
                                       r"'lamda'"):
    checkpoint.edit_params("alphaedit", params_file=j)
  j.write_text("[1, 2]")
  with pytest.raises(ValueError, match=r"p\.json: a parameters file holds a mapping"):
    checkpoint.edit_params("alphaedit", params_file=j)
  with pytest.raises(ValueError, match="expected name=value"):
    checkpoint.edit_params("rome", assignments=["v_lr"])


def test_cli_lists_and_rejects_params(capsys):
  assert cli_main(["edit", "--method", "memit", "--list-params",
                   "--set", "mom2_update_weight=123"]) == 0
  out = capsys.readouterr().out
  assert "mom2_update_weight = 123.0" in out and "target.v_num_grad_steps = 25" in out
  assert cli_main(["edit", "m", "r", "o", "--method", "memit", "--layers", "0",
                   "--set", "lambda=3"]) == 2
  assert "unknown parameter 'lambda'" in capsys.readouterr().err
  assert cli_main(["edit", "m", "r", "o", "--method", "grace", "--layers", "0"]) == 2
  assert "adaptor" in capsys.readouterr().err


def _tiny():
  cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                    num_attention_heads=2)
  from jaxparams.models import Llama
  p = jax.jit(Llama(cfg).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  return p, cfg


def test_write_is_atomic_and_leaves_other_folders_alone(tmp_path, monkeypatch):
  p, cfg = _tiny()
  out = tmp_path / "out"
  user = tmp_path / "out.edit-tmp"           # the old writer deleted a folder of this name
  user.mkdir()
  (user / "mine.txt").write_text("keep")
  checkpoint._write(p, cfg, out, None, None, False)
  first = jio.load_safetensors(out)
  assert (user / "mine.txt").read_text() == "keep"

  def boom(*_a, **_k):
    raise RuntimeError("killed while writing the delta")

  monkeypatch.setattr(checkpoint.delta_lib, "save_delta", boom)
  p2 = jax.tree_util.tree_map(lambda x: x + 1, p)
  with pytest.raises(RuntimeError, match="killed"):
    checkpoint._write(p2, cfg, out, None, object(), True)   # --overwrite, failing mid-way
  again = jio.load_safetensors(out)                          # the old output, whole
  assert sorted(again) == sorted(first)
  assert all(np.array_equal(again[k], first[k]) for k in first)
  assert sorted(x.name for x in tmp_path.iterdir()) == ["out", "out.edit-tmp"]
