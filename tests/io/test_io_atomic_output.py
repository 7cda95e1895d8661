"""Atomic output folders (issue 10, items 2, 4, 7, 9): no data loss at the output path,
umask permissions, dead runs' temporary folders swept, writability checked first."""

import logging
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxparams as jp
from jaxparams.io import atomic


def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def _names(folder):
  return sorted(p.name for p in folder.iterdir())


def test_folder_created_during_the_run_is_not_replaced(tmp_path):
  out = tmp_path / "out"
  with pytest.raises(FileExistsError, match=r"out: appeared while this run was writing .* the "
                     r"result is in .*out\.new-"):
    with jp.io.atomic_dir(out) as tmp:
      (tmp / "result.txt").write_text("new")
      out.mkdir()  # the user (or another run) creates the output meanwhile
      (out / "mine.txt").write_text("keep me")
  assert (out / "mine.txt").read_text() == "keep me" and _names(out) == ["mine.txt"]
  kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.new-")]
  assert len(kept) == 1 and (kept[0] / "result.txt").read_text() == "new"


def test_empty_folder_created_during_the_run_is_not_replaced(tmp_path):
  # plain rename(2) silently replaces an empty folder: publishing must not.
  out = tmp_path / "out"
  with pytest.raises(FileExistsError, match="appeared while this run was writing"):
    with jp.io.atomic_dir(out):
      out.mkdir()
  assert _names(out) == []


def test_two_identical_concurrent_runs_second_does_not_replace_first(tmp_path):
  out = tmp_path / "out"
  first, second = jp.io.atomic_dir(out), jp.io.atomic_dir(out)
  t1, t2 = first.__enter__(), second.__enter__()  # both started before either finished
  (t1 / "who").write_text("first")
  (t2 / "who").write_text("second")
  first.__exit__(None, None, None)
  with pytest.raises(FileExistsError, match="appeared while this run was writing"):
    second.__exit__(None, None, None)
  assert (out / "who").read_text() == "first"


def test_overwrite_is_one_atomic_exchange(tmp_path, monkeypatch):
  out = tmp_path / "out"
  jp.io.save_safetensors({"a": np.ones(1, np.float32)}, out)
  calls = []
  real = atomic._renameat2
  monkeypatch.setattr(atomic, "_renameat2",
                      lambda s, d, flags: calls.append(flags) or real(s, d, flags))
  jp.io.save_safetensors({"b": np.ones(1, np.float32)}, out, overwrite=True)
  assert atomic._RENAME_EXCHANGE in calls  # no moment without an output folder
  assert jp.io.load_safetensors(out).keys() == {"b"} and _names(tmp_path) == ["out"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_ctrl_c_while_the_old_output_is_removed_leaves_nothing_behind(tmp_path, monkeypatch,
                                                                      exchange):
  # A Ctrl-C landing while the replaced output was being removed interrupted the removal and
  # left it, half-deleted, under the temporary name. Now the removal finishes, then the
  # interrupt is raised: the new output is in place and nothing else is left.
  out = tmp_path / "out"
  jp.io.save_safetensors({"a": np.ones(1, np.float32)}, out)
  real_rmtree = atomic.shutil.rmtree

  def interrupted_rmtree(path, *a, **kw):
    os.kill(os.getpid(), signal.SIGINT)  # the handler runs at the next bytecode
    for _ in range(100):
      time.sleep(0.001)
    real_rmtree(path, *a, **kw)

  monkeypatch.setattr(atomic.shutil, "rmtree", interrupted_rmtree)
  if not exchange:
    monkeypatch.setattr(atomic, "_renameat2", lambda s, d, flags: False)
  with pytest.raises(KeyboardInterrupt):
    jp.io.save_safetensors({"b": np.ones(1, np.float32)}, out, overwrite=True)
  monkeypatch.setattr(atomic.shutil, "rmtree", real_rmtree)
  assert jp.io.load_safetensors(out).keys() == {"b"} and _names(tmp_path) == ["out"]


def test_overwrite_fallback_killed_between_renames_is_restored(tmp_path, monkeypatch):
  # Where renameat2 is missing, overwrite moves the old folder to .out.old-<host>-<pid>-*;
  # a run killed right there leaves no output: the next run puts the old one back.
  out = tmp_path / "out"
  jp.io.save_safetensors({"a": np.ones(1, np.float32)}, out)
  old = tmp_path / f".out.old-{atomic._host()}-{_dead_pid()}-0123abcd"
  os.rename(out, old)
  assert jp.io.sweep_stale(out) == []
  assert jp.io.load_safetensors(out).keys() == {"a"} and _names(tmp_path) == ["out"]
  monkeypatch.setattr(atomic, "_renameat2", lambda s, d, flags: False)
  jp.io.save_safetensors({"b": np.ones(1, np.float32)}, out, overwrite=True)
  assert jp.io.load_safetensors(out).keys() == {"b"} and _names(tmp_path) == ["out"]


def test_dead_runs_temp_folders_are_swept_live_and_foreign_ones_kept(tmp_path, caplog):
  out = tmp_path / "out"
  host = atomic._host()
  dead = tmp_path / f".out.tmp-{host}-{_dead_pid()}-00000001"
  alive = tmp_path / f".out.tmp-{host}-{os.getppid()}-00000002"
  foreign = tmp_path / ".out.tmp-ffffffff-1-00000003"
  legacy = tmp_path / ".out.tmp-k2j4h5g6"  # mkdtemp naming of earlier versions: no pid
  other = tmp_path / ".other.tmp-k2j4h5g6"
  old_alive = tmp_path / f".out.tmp-{host}-{os.getppid()}-00000004"  # pid alive, but 2 days old
  for d in (dead, alive, foreign, legacy, other, old_alive):
    d.mkdir()
    (d / "shard.safetensors").write_bytes(b"x" * 100)
  os.utime(old_alive, (time.time() - 2 * 86400,) * 2)
  with caplog.at_level(logging.WARNING, logger="jaxparams"):
    jp.io.save_safetensors({"a": np.ones(1, np.float32)}, out)  # the next run
  assert not dead.exists() and alive.exists() and foreign.exists() and legacy.exists()
  assert other.exists()
  assert old_alive.exists() and str(old_alive) in caplog.text
  assert str(legacy) in caplog.text and str(foreign) in caplog.text and str(alive) not in caplog.text


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_output_folder_permissions_follow_the_umask(tmp_path, umask):
  old = os.umask(umask)
  try:
    jp.io.save_safetensors({"a": np.ones(1, np.float32)}, tmp_path / "out")
    with jp.io.atomic_dir(tmp_path / "out2") as tmp:
      (tmp / "x").write_text("x")
  finally:
    os.umask(old)
  for d in ("out", "out2"):
    assert stat.S_IMODE((tmp_path / d).stat().st_mode) == 0o777 & ~umask


def test_unwritable_output_is_refused_before_any_work(tmp_path, monkeypatch):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(NotADirectoryError, match=r"file: is a file, so the output folder"):
    jp.io.check_output_dir(blocker / "out", overwrite=False)
  real_access = os.access
  monkeypatch.setattr(os, "access",
                      lambda p, mode, **kw: (False if str(p) == str(tmp_path)
                                                 else real_access(p, mode, **kw)))
  with pytest.raises(PermissionError, match=rf"{tmp_path}: not writable, so the output folder "):
    jp.io.check_output_dir(tmp_path / "a" / "out", overwrite=False)


def test_writer_accepts_size_text_and_refuses_bad_sizes(tmp_path):
  with jp.io.SafetensorsWriter(tmp_path / "o", max_shard_bytes="8B") as w:  # mergekit: 8e9
    w.add("a", np.ones(4, np.float32))
  for bad in (float("inf"), "inf", "nan", -1, 0, "abc", True):
    with pytest.raises(ValueError, match="max_shard_bytes: invalid size"):
      jp.io.SafetensorsWriter(tmp_path / "p", max_shard_bytes=bad)


@pytest.mark.parametrize("text,expected", [("5GB", 5 * 10**9), ("500M", 5 * 10**8),
                                           ("2GiB", 2 * 2**30), ("1e3", 1000), ("5B", 5 * 10**9),
                                           (1024, 1024), ("7_000", 7000)])
def test_parse_size(text, expected):
  assert jp.io.parse_size(text) == expected


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "-5", "0", "", "GB", "5XB", "1e400",
                                  "9" * 5000, float("nan")])
def test_parse_size_refuses_with_the_parameter_named(text):
  with pytest.raises(ValueError, match=r"--max-shard-size: invalid size"):
    jp.io.parse_size(text, what="--max-shard-size")


def test_parse_dtype():
  assert jp.io.parse_dtype("bfloat16") == jp.io.parse_dtype("BF16") == jp.io.parse_dtype("bf16")
  with pytest.raises(ValueError, match=r"--dtype: unknown dtype 'float99'; valid: .*bfloat16"):
    jp.io.parse_dtype("float99", what="--dtype")
