"""Exact resume (4 steps == 3 steps + resume 1, across a growth step) and config-mismatch refusal."""

import importlib.util
import pathlib

import chex
import pytest

from jaxparams.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_config(name, arg="runlocal"):
  spec = importlib.util.spec_from_file_location(f"_cfg_{name}", REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def _config(stop_at_step=0):
  config = load_config("tokenformer_lm")
  config.num_steps = 4
  config.growth.steps = (2,)
  config.checkpoint_every = 100  # only the stop/end checkpoints
  config.plot = False
  config.stop_at_step = stop_at_step
  return config


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  return trainer.train(_config(), tmp_path_factory.mktemp("straight"))


@pytest.fixture(scope="module", params=[2, 3], ids=["stop2_grow_after_restore",
                                                     "stop3_restore_grown"])
def interrupted(request, tmp_path_factory):
  workdir = tmp_path_factory.mktemp(f"interrupted{request.param}")
  first = trainer.train(_config(stop_at_step=request.param), workdir)
  resumed = trainer.train(_config(), workdir)
  return request.param, first, resumed


def _losses(result):
  return [(r["step"], r["loss"]) for r in result.records if r["event"] == "train"]


def test_resume_is_exact(straight, interrupted):
  """Growth is at step 2: stopping at 2 checkpoints the small model and grows after restore;
  stopping at 3 checkpoints (and restores) the grown shapes."""
  stop, first, resumed = interrupted
  assert first.step == stop and resumed.step == 4
  assert resumed.model_config == straight.model_config
  assert (first.model_config == straight.model_config) == (stop == 3)
  chex.assert_trees_all_equal(resumed.params, straight.params)
  assert _losses(resumed) == _losses(straight)
  growth = lambda res: [r for r in res.records if r["event"] == "growth"]
  assert growth(resumed) == growth(straight)
  events = [(r["event"], r["step"]) for r in resumed.records]
  assert ("resume", stop) in events


def test_resume_from_other_config_is_refused(interrupted):
  _, first, _ = interrupted
  config = _config()
  config.seed = 1
  with pytest.raises(ValueError, match="seed"):
    trainer.train(config, first.workdir)
  config = _config()
  config.model.d_model = 64
  with pytest.raises(ValueError, match="model.d_model"):
    trainer.train(config, first.workdir)
