"""One process of the 2-process x 4-CPU-device run (started by test_multihost.py, not collected).

``python multihost_worker.py PORT PROCESS_ID WORKDIR STOP_AT OUT_NPZ [FAIL]``: joins the jax.distributed
cluster on localhost (gloo CPU collectives), trains ``tokenformer_lm:runlocal,grow=0`` for 4 steps
(stopping after ``STOP_AT`` if > 0, which checkpoints), and process 0 writes the final params and
the train losses to ``OUT_NPZ``. ``FAIL=1`` runs ``fault_tolerant_lm`` instead: after step 3 each
process loses node 1's piece of its step-2 host snapshot, rebuilds it from parity and resumes.
"""

import importlib.util
import os
import pathlib
import sys

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]


def config(stop_at: int = 0, fail: bool = False):
  """tokenformer_lm (no growth), 4 steps; ``fail``: fault_tolerant_lm losing node 1 after step 4
  (snapshots every 2 steps)."""
  name, arg = ("fault_tolerant_lm", "runlocal,fail=1") if fail else ("tokenformer_lm",
                                                                      "runlocal,grow=0")
  spec = importlib.util.spec_from_file_location("_cfg", REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  c.num_steps, c.stop_at_step, c.checkpoint_every, c.plot = 4, stop_at, 100, False
  if fail:
    c.snapshot.every, c.snapshot.fail_at = 2, 3
  return c


def main(port: str, process_id: str, workdir: str, stop_at: str, out: str, fail: str = "0"
         ) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                             process_id=int(process_id))
  from jaxparams import tree as jtree  # pylint: disable=g-import-not-at-top
  from jaxparams.train import trainer  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8 and jax.local_device_count() == 4
  result = trainer.train(config(int(stop_at), fail=fail == "1"), workdir)
  if jax.process_index() == 0:
    flat = jtree.flatten(result.params)
    arrays = {k: np.asarray(v.addressable_data(0)) for k, v in flat.items()}  # replicated
    losses = [r["loss"] for r in result.records if r["event"] == "train"]
    np.savez(out, __losses__=np.asarray(losses), __step__=result.step, **arrays)
  jax.distributed.shutdown()


if __name__ == "__main__":
  # Read when the backend starts (first use), so setting them here is early enough; not at import
  # time, as the test process imports this module for config() with its own 8 devices.
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  os.environ["JAX_PLATFORMS"] = "cpu"
  main(*sys.argv[1:])
