"""The one calibration-text reader: strict on hostile files, exact on good ones, used by the CLIs."""

import argparse
import os

import pytest

from jaxparams.io import read_calibration_text


def _write(tmp_path, data: bytes, name="cal.txt"):
  p = tmp_path / name
  p.write_bytes(data)
  return p


def test_good_file_lines_stripped_and_empty_dropped(tmp_path):
  p = _write(tmp_path, "  héllo wörld \n\n\tsecond line\r\nthird".encode())
  assert read_calibration_text(p) == ["héllo wörld", "second line", "third"]
  assert read_calibration_text(p, max_lines=2) == ["héllo wörld", "second line"]
  # edit's --stats-text keeps its lines as str.splitlines() gives them
  raw = read_calibration_text(p, strip=False, keep_empty=True)
  assert raw == p.read_text().splitlines()


@pytest.mark.parametrize("data, msg", [
    (b"ok\n\x00\x01\x02binary", r"line 2: .*binary data \(byte 0x00 at offset 3\)"),
    (b"ok\nfine\n\xff\xfe bad", r"line 3: .*not valid UTF-8 \(byte 0xff at offset 8\)"),
    (b"\n  \n\t\n", r"no non-empty line"),
    (b"", r"no non-empty line"),
])
def test_refuses_binary_non_utf8_and_empty(tmp_path, data, msg):
  p = _write(tmp_path, data)
  with pytest.raises(ValueError, match=msg) as e:
    read_calibration_text(p)
  assert str(p) in str(e.value)


def test_size_and_line_limits_checked_before_reading(tmp_path):
  p = _write(tmp_path, b"a" * 1000 + b"\nshort\n")
  with pytest.raises(ValueError, match=r"1007 bytes, more than the limit of 100 bytes"):
    read_calibration_text(p, max_bytes=100)
  with pytest.raises(ValueError, match=r"line 1: 1000 characters, more than the limit of 10"):
    read_calibration_text(p, max_line_chars=10)


def test_symlink_out_of_its_folder_is_refused_inside_is_followed(tmp_path):
  secret = _write(tmp_path, b"secret token\n", "secret.txt")
  d = tmp_path / "data"
  d.mkdir()
  os.symlink(secret, d / "cal.txt")
  with pytest.raises(ValueError, match=r"symlink to .*secret.txt, outside its folder"):
    read_calibration_text(d / "cal.txt")
  _write(d, b"inside\n", "real.txt")
  os.symlink(d / "real.txt", d / "link.txt")
  assert read_calibration_text(d / "link.txt") == ["inside"]


def test_missing_file_and_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such calibration text file"):
    read_calibration_text(tmp_path / "nope.txt")
  with pytest.raises(ValueError, match="not a regular file"):
    read_calibration_text(tmp_path)


@pytest.mark.parametrize("command", ["quantize", "prune"])
def test_clis_refuse_binary_calibration_before_loading(tmp_path, command):
  """gptq used to accept random binary as calibration text (errors='replace')."""
  from jaxparams.cli import prune as pcli, quantize as qcli
  p = _write(tmp_path, bytes(range(256)) * 4)
  if command == "quantize":
    with pytest.raises(ValueError, match=r"cal.txt: line 1: .*binary data"):
      qcli._read_texts(p, 16)
  else:
    args = argparse.Namespace(calibration=str(p), where=None, method="wanda", pattern=None,
                              src=str(tmp_path / "missing"), out=str(tmp_path / "o"),
                              overwrite=False, max_samples=8)
    with pytest.raises(ValueError, match=r"cal.txt: line 1: .*binary data"):
      pcli._run_calibrated(args, {})
