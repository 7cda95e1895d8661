"""Ctrl-C while orbax's background writer runs (issue 10, item 4): the write finishes first,
then KeyboardInterrupt; the atomic folder is removed with nothing writing into it."""

import os
import signal
import time

import numpy as np
import pytest

import jaxparams as jp


def test_ctrl_c_is_deferred_until_the_block_ends():
  done = []
  with pytest.raises(KeyboardInterrupt):
    with jp.io.finish_before_interrupt("the test write"):
      os.kill(os.getpid(), signal.SIGINT)
      done.append("finished after the interrupt")
  assert done == ["finished after the interrupt"]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_second_ctrl_c_stops_at_once():
  done = []
  with pytest.raises(KeyboardInterrupt):
    with jp.io.finish_before_interrupt("the test write"):
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGINT)
      done.append("not reached")
  assert done == []


@pytest.mark.parametrize("moment", ["save", "wait_until_finished", "close"])
def test_ctrl_c_during_orbax_save_leaves_nothing(tmp_path, monkeypatch, moment):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  real = getattr(ocp.StandardCheckpointer, moment)
  calls = []

  def interrupted(self, *a, **k):
    if not calls:  # the first call only: Ctrl-C arrives as orbax starts this step
      calls.append(moment)
      os.kill(os.getpid(), signal.SIGINT)
    return real(self, *a, **k)
  monkeypatch.setattr(ocp.StandardCheckpointer, moment, interrupted)
  tree = {f"w{i}": np.full((256, 256), i, np.float32) for i in range(32)}
  with pytest.raises(KeyboardInterrupt):
    with jp.io.atomic_dir(tmp_path / "out") as tmp:
      jp.io.save_orbax(tree, tmp / "params")
  time.sleep(1.0)  # a writer still running would recreate files here
  assert calls and list(tmp_path.iterdir()) == []
