"""Multi-host on one machine: 2 processes x 4 CPU devices (jax.distributed + gloo) train, stop
with a checkpoint, resume, and end where the single-process 8-device run ends."""

import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxparams import tree as jtree
from jaxparams.train import trainer

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import multihost_worker  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _cluster(workdir, stop_at, out, fail=False):
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, str(HERE / "multihost_worker.py"), str(port), str(i),
                             str(workdir), str(stop_at), str(out), str(int(fail))],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]


@pytest.mark.slow
def test_two_processes_checkpoint_resume_equal_single_process(tmp_path):
  single = trainer.train(multihost_worker.config(), tmp_path / "single")
  assert jax.device_count() == 8
  _cluster(tmp_path / "multi", 2, tmp_path / "first.npz")    # steps 1-2, checkpoint at 2
  _cluster(tmp_path / "multi", 0, tmp_path / "final.npz")    # resume: steps 3-4
  first, final = np.load(tmp_path / "first.npz"), np.load(tmp_path / "final.npz")
  assert int(first["__step__"]) == 2 and int(final["__step__"]) == 4
  losses = [r["loss"] for r in single.records if r["event"] == "train"]
  np.testing.assert_allclose(final["__losses__"], losses, rtol=1e-6)
  for name, value in jtree.flatten(single.params).items():
    np.testing.assert_allclose(final[name], np.asarray(value), rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.slow
def test_two_processes_rebuild_a_lost_snapshot_and_resume(tmp_path):
  """fault_tolerant_lm on 2 processes: node 1's snapshot piece is lost after step 3, rebuilt from
  parity on each process, and the run ends where the uninterrupted single-process run ends."""
  single = trainer.train(multihost_worker.config(), tmp_path / "single")  # same trajectory
  _cluster(tmp_path / "multi", 0, tmp_path / "ft.npz", fail=True)
  ft = np.load(tmp_path / "ft.npz")
  assert int(ft["__step__"]) == 4
  losses = [r["loss"] for r in single.records if r["event"] == "train"]
  np.testing.assert_allclose(ft["__losses__"], losses, rtol=1e-6)
  for name, value in jtree.flatten(single.params).items():
    np.testing.assert_allclose(ft[name], np.asarray(value), rtol=1e-6, atol=1e-7, err_msg=name)
