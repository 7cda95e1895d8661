"""Every configs/*.py runs shrunk (runlocal) on the 8 fake CPU devices, growth included."""

import importlib.util
import math
import pathlib
import sys

import jax
import numpy as np
import pytest

from jaxparams.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]
# Every training config (configs/ also holds other tools' recipes, e.g. merge configs).
# Configs that name their own driver (`c.entry = 'module:function'`, e.g. streamadapter) are
# tested with that driver (tests/adapt/test_streamadapter.py), not against the trainer's fields.
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                 if "from jaxparams.train import" in p.read_text()
                 and ".entry = " not in p.read_text())
# The configs that grow the model mid-run (the others fine-tune, sample or snapshot).
GROWING = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                 if "config.growth.hook = " in p.read_text())


def load_config(name, arg="runlocal"):
  spec = importlib.util.spec_from_file_location(f"_cfg_{name}", REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


# Per-config overrides for the smoke run: llama also exercises param sharding on 'model'.
OVERRIDES = {"llama_net2net": {"mesh.model": 2}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = {}
  for name in CONFIGS:
    config = load_config(name)
    for key, value in OVERRIDES.get(name, {}).items():
      sub, field = key.split(".")
      config[sub][field] = value
    out[name] = (config, trainer.train(config, tmp_path_factory.mktemp(name)))
  return out


def test_configs_found():
  assert {"tokenformer_lm", "llama_net2net", "zo_finetune", "wtacrs_finetune",
          "fault_tolerant_lm"} <= set(CONFIGS)
  assert set(GROWING) == {"tokenformer_lm", "llama_net2net"}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_shrunk_on_8_devices(runs, name):
  assert jax.device_count() == 8
  config, result = runs[name]
  assert result.step == config.num_steps <= 3
  train = [r for r in result.records if r["event"] == "train"]
  assert [r["step"] for r in train] == list(range(1, config.num_steps + 1))
  assert all(math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in train)
  # A byte LM starts near log(256) = 5.55 nats.
  assert abs(train[0]["loss"] - math.log(256)) < 0.5
  assert (result.workdir / "loss.png").stat().st_size > 1000
  assert (result.workdir / "checkpoints" / str(config.num_steps)).is_dir()
  leaf = jax.tree.leaves(result.params)[0]
  assert len(leaf.sharding.device_set) == 8


@pytest.mark.parametrize("name", GROWING)
def test_growth_is_continuous(runs, name):
  """Loss of the fixed eval batch just before == just after growth (function preserving)."""
  config, result = runs[name]
  growth = [r for r in result.records if r["event"] == "growth"]
  assert [g["step"] for g in growth] == list(config.growth.steps)
  if not config.growth.steps:
    return  # a config without growth (e.g. facts_lm): nothing more to check
  for g in growth:
    assert g["n_params_after"] > g["n_params_before"]
    np.testing.assert_allclose(g["loss_after"], g["loss_before"], rtol=0, atol=1e-5)
  # The model really grew and training went on with it.
  after = [r for r in result.records if r["event"] == "train" and r["step"] > growth[0]["step"]]
  assert after and all(r["n_params"] == growth[-1]["n_params_after"] for r in after)


def test_llama_params_sharded_on_model_axis(runs):
  _, result = runs["llama_net2net"]
  kernel = result.params["layers_0"]["mlp"]["up_proj"]["kernel"]
  assert kernel.shape[-1] == 64  # widened 32 -> 64
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")


@pytest.mark.parametrize("extra, field", [
    (["--config.num_stepz=3"], "num_stepz"),
    (["--config.model.d_modle=3"], "d_modle"),
])
def test_cli_rejects_unknown_field(monkeypatch, extra, field):
  from absl import flags
  from jaxparams.train import __main__ as cli
  argv = ["prog", f"--config={REPO}/configs/tokenformer_lm.py:runlocal", "--workdir=/tmp/x"]
  monkeypatch.setattr(sys, "argv", argv + extra)  # config_flags reads overrides from sys.argv
  fv = flags.FlagValues()
  cli.define_flags(fv)
  with pytest.raises(AttributeError, match=field):
    fv(argv + extra)


def test_cli_overrides_fields(monkeypatch):
  from absl import flags
  from jaxparams.train import __main__ as cli
  argv = ["prog", f"--config={REPO}/configs/tokenformer_lm.py:runlocal", "--workdir=/tmp/x",
          "--config.num_steps=7", "--config.growth.kwargs.n_new_tokens.ffn=4"]
  monkeypatch.setattr(sys, "argv", argv)
  fv = flags.FlagValues()
  cli.define_flags(fv)
  fv(argv)
  assert fv.config.num_steps == 7 and fv.config.growth.kwargs.n_new_tokens.ffn == 4
  trainer.check_config(fv.config)


@pytest.mark.parametrize("path", ["optim.lrr", "growth.stepz", "model.d_modle", "extra"])
def test_unknown_config_field_is_named(path):
  config = load_config("tokenformer_lm")
  with config.unlocked():
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = 1
  with pytest.raises(ValueError, match=leaf):
    trainer.check_config(config)


def test_unknown_growth_kwarg_and_hook_are_named():
  config = load_config("llama_net2net")
  config.growth.kwargs.unlock()
  config.growth.kwargs.new_width = 3
  with pytest.raises(ValueError, match="new_width"):
    trainer.check_config(config)
  config = load_config("llama_net2net")
  config.growth.hook = "tokenformer_grow"
  with pytest.raises(ValueError, match="family"):
    trainer.check_config(config)


def test_runlocal_arg_parsing():
  with pytest.raises(ValueError, match="runlcal"):
    load_config("tokenformer_lm", "runlcal")
  assert load_config("tokenformer_lm", "runlocal,grow=0").growth.steps == ()


@pytest.mark.parametrize("name", CONFIGS)
def test_full_size_config_is_valid(name):
  """The un-shrunk config passes validation (growing ones grow at a step inside the run)."""
  config = load_config(name, None)
  trainer.check_config(config)
  if name in GROWING:
    assert config.growth.steps and all(0 < s < config.num_steps for s in config.growth.steps)
  assert 0 < config.snapshot.fail_at < config.num_steps or not config.snapshot.fail_at
  assert config.batch_size % 8 == 0


def test_the_new_configs_do_what_they_say(runs):
  """zo_finetune trains with MeZO (no optimizer moments), wtacrs_finetune samples its weight
  gradients, fault_tolerant_lm rebuilt a lost node's snapshot and resumed."""
  zo_config, zo_result = runs["zo_finetune"]
  assert zo_config.optim.name == "mezo"
  wta_config, _ = runs["wtacrs_finetune"]
  assert wta_config.backward.name == "wtacrs"
  ft_config, ft_result = runs["fault_tolerant_lm"]
  recovered = [r for r in ft_result.records if r["event"] == "recovered"]
  assert [(r["step"], r["failed_at"]) for r in recovered] == [(2, ft_config.snapshot.fail_at)]
