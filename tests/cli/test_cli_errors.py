"""CLI robustness (issue 10, items 4, 7, 8, 11, 12): one line naming the thing and exit 2 for
every bad input, exit 130 without a traceback on Ctrl-C, names shown literally by inspect."""

import json
import os
import shlex
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jaxparams as jp
from jaxparams.cli import inspect as cli_inspect
from jaxparams.cli.main import main
from jaxparams.tree.summary import LeafStats

JAXPARAMS = [str(Path(sys.executable).parent / "jaxparams")]  # the console script


def _one_line(capsys, code, argv, message):
  assert main(argv) == code
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
  assert len(err) == 1, err
  assert "Traceback" not in err[0]
  if message:
    assert message in err[0], err[0]
  return err[0]


@pytest.fixture()
def ck(tmp_path):
  jp.io.save_safetensors({"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)},
                         tmp_path / "ck", config={"model_type": "bert"})
  return tmp_path / "ck"


def _header_file(tmp_path, text):
  p = tmp_path / "bad.safetensors"
  h = text.encode()
  p.write_bytes(struct.pack("<Q", len(h)) + h + b"xy")
  return p


@pytest.mark.parametrize("text", [
    '{"a":{"dtype":"U8","shape":[Infinity],"data_offsets":[0,2]}}',
    '{"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,2]}}',
    '{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":' + "[" * 5000 + "]" * 5000 + "}}",
    '{"__metadata__": 5}',
    '{"a":{"dtype":"U8","shape":"2","data_offsets":[0,2]}}',
    '{"a": 7}',
])
@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_hostile_headers_one_line_exit_2(tmp_path, capsys, text, command):
  p = _header_file(tmp_path, text)
  argv = [command, str(p)] + ([str(tmp_path / "out")] if command == "convert" else [])
  _one_line(capsys, 2, argv, "bad.safetensors")
  assert not (tmp_path / "out").exists()


def test_bad_sizes_dtypes_regexes_one_line(ck, tmp_path, capsys):
  _one_line(capsys, 2, ["convert", str(ck), str(tmp_path / "o"), "--to", "safetensors",
                        "--max-shard-size", "inf"], "--max-shard-size: invalid size 'inf'")
  _one_line(capsys, 2, ["inspect", str(ck), "--where", "re:a(("],
            "invalid regular expression 'a((': missing )")
  assert main(["convert", str(ck), str(tmp_path / "o"), "--to", "safetensors",
               "--max-shard-size", "5GB"]) == 0  # the same size parser as merge
  assert jp.io.load_safetensors(tmp_path / "o").keys() == {"w", "b"}


def test_unwritable_output_refused_before_loading(ck, tmp_path, capsys, monkeypatch):
  out_parent = tmp_path / "ro"
  out_parent.mkdir()
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, m, **kw: False if str(p) == str(out_parent) else real(p, m, **kw))
  monkeypatch.setattr(jp.io, "load_any", lambda *a: pytest.fail("loaded before checking"))
  _one_line(capsys, 2, ["convert", str(ck), str(out_parent / "o")],
            f"{out_parent}: not writable, so the output folder")


def test_oserror_names_the_file(ck, tmp_path, capsys, monkeypatch):
  def boom(*a, **k):
    raise OSError(27, "File too large", str(tmp_path / "o" / "model.safetensors"))
  monkeypatch.setattr(jp.io.safetensors_writer, "write_safetensors_file", boom)
  line = _one_line(capsys, 2, ["convert", str(ck), str(tmp_path / "o"), "--to", "safetensors"],
                   "model.safetensors: File too large")
  assert line.startswith("jaxparams convert: error: ")
  assert not (tmp_path / "o").exists() and [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_file_too_large_for_real(ck, tmp_path):
  # `ulimit -f` makes write() fail with EFBIG (Python ignores SIGXFSZ): one line, exit 2.
  big = tmp_path / "big"
  jp.io.save_safetensors({"w": np.ones(4096, np.float32)}, big)
  cmd = " ".join(shlex.quote(a) for a in JAXPARAMS + ["convert", str(big), str(tmp_path / "o"),
                                                      "--to", "safetensors"])
  r = subprocess.run(["bash", "-c", f"ulimit -f 4 && exec {cmd}"], capture_output=True,
                     text=True, timeout=300, check=False)
  err = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(err) == 1, r.stderr
  assert "shard-00000.safetensors: File too large" in err[0], r.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "ck"]  # no output, no temp


def test_keyboard_interrupt_in_a_command_is_one_line_130(ck, capsys, monkeypatch):
  def interrupted(*a, **k):
    raise KeyboardInterrupt
  monkeypatch.setattr(jp.io.convert, "load_any", interrupted)  # what convert_checkpoint reads with
  _one_line(capsys, 130, ["convert", str(ck), str(ck.parent / "o")], "interrupted")


def test_bug_keyerror_keeps_its_traceback(ck, monkeypatch):
  def bug(*a, **k):
    return {}["x"]
  monkeypatch.setattr(jp.io.convert, "load_any", bug)
  with pytest.raises(KeyError):
    main(["convert", str(ck), str(ck.parent / "o")])


# ---- item 8: inspect shows names literally --------------------------------------------------


def test_inspect_escapes_markup_and_control_characters(tmp_path, capsys):
  names = ["a[/]", "[link=https://evil.example]click[/link]", "ckpt[v2]", "red\x1b[31mX",
           "bell\x07", "[bold]b[/bold]"]
  folder = tmp_path / "dir[red]x[/red]"
  jp.io.save_safetensors({n: np.ones(1, np.float32) for n in names}, folder)
  assert main(["inspect", str(folder)]) == 0
  out = capsys.readouterr().out
  for n in ("a[/]", "[link=https://evil.example]click[/link]", "ckpt[v2]", "red\\x1b[31mX",
            "bell\\x07", "[bold]b[/bold]", "dir[red]x[/red]"):
    assert n in out, n
  assert "\x1b" not in out and "\x07" not in out


# ---- item 12: inspect streams its table ------------------------------------------------------


def test_inspect_prints_rows_before_the_whole_table_is_built(tmp_path, capsys, monkeypatch):
  n_ok = cli_inspect._BLOCK + 10

  def rows(path, *, stats, where):
    for i in range(n_ok):
      yield LeafStats(f"t{i}", (1,), "float32", 1, 4)
    raise ValueError(f"{path}: stop here")
  monkeypatch.setattr(jp.io, "checkpoint_rows", rows)  # the library call the command prints
  assert main(["inspect", str(tmp_path)]) == 2
  out = capsys.readouterr().out
  assert f"t{cli_inspect._BLOCK - 1}" in out  # the first block was printed already
  assert f"t{cli_inspect._BLOCK + 5}" not in out


def test_inspect_large_header_and_totals(tmp_path, capsys):
  n = 3000
  header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
  h = json.dumps(header).encode()
  (tmp_path / "many.safetensors").write_bytes(struct.pack("<Q", len(h)) + h)
  assert main(["inspect", str(tmp_path / "many.safetensors")]) == 0
  out = capsys.readouterr().out
  assert f"t{n - 1}" in out and f"total: {n:,} tensors, 0 params" in out


# ---- item 4: Ctrl-C during start-up ----------------------------------------------------------


def _wait_until_importing_jax(p, timeout=120.0) -> None:
  """Returns once process ``p`` has begun loading jaxlib (or exited).

  jax is imported by the sub-command after ``jaxparams/__init__.py`` installed its start-up
  Ctrl-C handler, so a SIGINT sent from here on lands in the start-up being tested, however
  loaded the machine is; a fixed sleep from ``Popen`` could land before Python's own handler
  (killed by the signal) on a busy machine. Without ``/proc`` (not Linux) it returns at once.
  """
  maps = Path(f"/proc/{p.pid}/maps")
  t0 = time.monotonic()
  while p.poll() is None and time.monotonic() - t0 < timeout:
    try:
      if "/jaxlib/" in maps.read_text():
        return
    except FileNotFoundError:
      return  # no /proc here, or the process is gone
    except OSError:
      pass
    time.sleep(0.01)
  assert p.poll() is not None or time.monotonic() - t0 < timeout, "jaxlib never loaded"


def _sigint_after(argv, delay, **kw):
  """SIGINT ``delay`` seconds after the command began importing jax (its start-up)."""
  p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
  _wait_until_importing_jax(p)
  time.sleep(delay)
  p.send_signal(signal.SIGINT)
  out, err = p.communicate(timeout=120)
  return p.returncode, out, err


@pytest.mark.parametrize("delay", [0.0, 0.7])
def test_ctrl_c_during_start_up_is_one_line_130(ck, delay):
  code, _, err = _sigint_after(JAXPARAMS + ["inspect", str(ck)], delay)
  lines = err.strip().splitlines()
  assert "Traceback" not in err and len(lines) <= 1, err
  assert code in (130, 0), err  # 0 only if it finished first


def test_module_entry_ctrl_c_during_start_up(ck):
  code, _, err = _sigint_after([sys.executable, "-W", "ignore", "-m", "jaxparams.cli.main",
                                "inspect", str(ck)], 0.0)
  assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
