"""The trainer as a user meets it: first update, config errors, Ctrl-C / SIGTERM (issue 9)."""

import importlib.util
import os
import pathlib
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from absl import flags

from jaxparams.train import __main__ as cli
from jaxparams.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_config(name, arg="runlocal"):
  spec = importlib.util.spec_from_file_location(f"_cfg_{name}", REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.mark.parametrize("warmup", [1, 4, 100])
def test_first_update_has_a_nonzero_learning_rate(warmup):
  o = ml_collections.ConfigDict(dict(lr=2.0, warmup_steps=warmup, end_lr_ratio=0.1))
  lrs = [trainer.learning_rate(s, o, 1000) for s in range(warmup + 1)]
  assert lrs[0] == pytest.approx(2.0 / warmup) and lrs[0] > 0
  assert lrs[warmup - 1] == pytest.approx(2.0)  # update `warmup` reaches the full rate


@pytest.mark.parametrize("extra, needle", [
    (["--config=configs/tokenformer_lm.py:runlcal"], "runlcal"),
    (["--config=configs/tokenformer_lm.py:runlocal", "--config.num_stepz=3"], "num_stepz"),
    (["--config=configs/tokenformer_lm.py:runlocal", "--config.num_steps=abc"], "abc"),
    (["--config=configs/no_such_config.py"], "no_such_config"),
    ([], "config"),
])
def test_config_errors_are_one_line_and_exit_2(monkeypatch, capsys, extra, needle):
  monkeypatch.chdir(REPO)
  argv = ["prog", *extra, "--workdir=/tmp/unused"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from sys.argv
  fv = flags.FlagValues()
  cli.define_flags(fv)
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(argv, fv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and needle in err
  assert "Traceback" not in err


def test_trainer_config_errors_are_one_line_and_exit_2(capsys, tmp_path):
  config = load_config("tokenformer_lm")
  config.growth.hook = "no_such_hook"
  with pytest.raises(SystemExit) as e:
    cli.run(config, str(tmp_path))
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1 and "no_such_hook" in err
  config = load_config("tokenformer_lm")
  config.batch_size = 3  # not divisible by the 8 data-parallel devices
  with pytest.raises(trainer.ConfigError, match="divisible"):
    trainer.train(config, tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_returns(tmp_path, sig):
  """A signal after step 2 of 5 (checkpoints every 100): step 2 is saved and resumable."""
  config = load_config("tokenformer_lm", "runlocal,grow=0")
  config.num_steps, config.checkpoint_every, config.plot = 5, 100, False

  def progress(r):
    if r["event"] == "train" and r["step"] == 2:
      os.kill(os.getpid(), sig)

  result = trainer.train(config, tmp_path, progress=progress)
  assert result.interrupted == sig and result.step == 2
  assert (tmp_path / "checkpoints" / "2").is_dir()
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
  resumed = trainer.train(config, tmp_path)
  assert resumed.step == 5 and resumed.interrupted is None
  assert ("resume", 2) in [(r["event"], r["step"]) for r in resumed.records]


def test_ctrl_c_in_the_cli_exits_cleanly(tmp_path):
  """`python -m jaxparams.train` + SIGINT: no traceback, exit 130, checkpoint at that step."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(
      [sys.executable, "-m", "jaxparams.train", "--config=configs/tokenformer_lm.py:runlocal,grow=0",
       f"--workdir={tmp_path}", "--config.num_steps=100000", "--config.checkpoint_every=100000",
       "--config.plot=false"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.split()[:2] == ["step", "2"]:
      proc.send_signal(signal.SIGINT)
      break
  out, err = proc.communicate(timeout=300)
  lines += out.splitlines()
  assert proc.returncode == 130, err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  last = [ln for ln in lines if ln.startswith("interrupted")]
  assert last, lines
  step = int(last[0].split("after step ")[1].split(":")[0])
  assert step >= 2 and (tmp_path / "checkpoints" / str(step)).is_dir()
