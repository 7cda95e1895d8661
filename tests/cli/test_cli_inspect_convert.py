"""CLI: inspect and convert, including exit code 2 with one clear line."""

import subprocess
import sys

import chex
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.cli.main import main


@pytest.fixture()
def ckpt(tmp_path):
  t = {"encoder.layer.0.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
       "encoder.layer.0.bias": np.zeros(3, np.float32), "ids": np.arange(4, dtype=np.int32)}
  jp.io.save_safetensors(t, tmp_path / "ck", config={"model_type": "bert"}, max_shard_bytes=40)
  return tmp_path / "ck", t


def test_inspect_headers_and_stats(ckpt, capsys):
  path, _ = ckpt
  assert main(["inspect", str(path)]) == 0
  out = capsys.readouterr().out
  assert "encoder.layer.0.weight" in out and "(3, 4)" in out and "19" in out  # total params
  assert main(["inspect", str(path), "--stats", "--where", "*.weight"]) == 0
  out = capsys.readouterr().out
  assert "5.5" in out and "11" in out and "bias" not in out  # mean and abs-max of arange(12)


def test_convert_round_trip_is_exact(ckpt, tmp_path):
  path, t = ckpt
  assert main(["convert", str(path), str(tmp_path / "orb")]) == 0
  assert (tmp_path / "orb" / "config.json").exists()
  assert main(["convert", str(tmp_path / "orb"), str(tmp_path / "back")]) == 0
  chex.assert_trees_all_equal(jp.io.load_safetensors(tmp_path / "back"), t)


@pytest.mark.parametrize("argv,message", [
    (["inspect", "{tmp}/missing"], "missing: no such file or folder"),
    (["convert", "{ck}", "{ck}"], "output folder already exists"),
    (["inspect", "{tmp}/model.bin"], "refusing pickle"),
])
def test_bad_input_exit_code_2_one_line(ckpt, tmp_path, capsys, argv, message):
  (tmp_path / "model.bin").write_bytes(b"\x80")
  argv = [a.format(tmp=tmp_path, ck=ckpt[0]) for a in argv]
  assert main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0]


def test_console_script_help():
  r = subprocess.run([sys.executable, "-m", "jaxparams.cli.main", "--help"], capture_output=True,
                     text=True, check=True)
  assert "inspect" in r.stdout and "convert" in r.stdout
