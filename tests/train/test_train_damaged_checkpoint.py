"""Resuming past a damaged latest checkpoint (issue 25, item 5): the newest intact step is
restored with one warning, and the rerun reaches the same parameters as the undamaged run."""

import importlib.util
import logging
import pathlib

import chex
import pytest

from jaxparams.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]


def _config():
  spec = importlib.util.spec_from_file_location("_cfg_tokenformer_lm",
                                                REPO / "configs" / "tokenformer_lm.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config("runlocal")
  config.num_steps = 3
  config.growth.steps = ()
  config.checkpoint_every = 1
  config.keep_checkpoints = 3
  config.plot = False
  return config


def _truncate_largest_data_file(step_dir: pathlib.Path) -> None:
  f = max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
          key=lambda p: p.stat().st_size)
  with open(f, "r+b") as h:
    h.truncate(f.stat().st_size // 3)


@pytest.mark.slow  # one short training run (compiles the step: ~15 s CPU); the five damage
@pytest.mark.parametrize("damage", ["truncated_data"])  # kinds run fast in tests/fuzz
def test_resume_falls_back_to_newest_intact_step(tmp_path, caplog, damage):
  first = trainer.train(_config(), tmp_path)
  step_dir = tmp_path / "checkpoints" / "3"
  if damage == "truncated_data":
    _truncate_largest_data_file(step_dir)
  else:
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(step_dir / "state")
  with caplog.at_level(logging.WARNING, logger="jaxparams.train.checkpoint"):
    again = trainer.train(_config(), tmp_path)
  warnings = [r for r in caplog.records if r.name == "jaxparams.train.checkpoint"]
  assert len(warnings) == 1 and "step 3" in warnings[0].getMessage()
  assert "\n" not in warnings[0].getMessage()
  assert ("resume", 2) in [(r["event"], r["step"]) for r in again.records]
  assert again.step == 3
  chex.assert_trees_all_equal(again.params, first.params)  # step 3 recomputed bit-exactly
  assert any(p.name.startswith("3.damaged-") for p in (tmp_path / "checkpoints").iterdir())
