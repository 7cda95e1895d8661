"""Snapshot overhead per step vs frequency: in-memory XOR-parity snapshots vs orbax async to disk.

A TokenFormer byte LM (d_model 128, 2 layers) trains ``--steps`` steps on all devices (run with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` to mimic 4 nodes x 2 devices; on a
loaded 2-core machine the 8 fake devices can miss XLA's 40 s collective rendezvous, so the
recorded run used one device) with

* no snapshots (baseline),
* :class:`jaxparams.train.snapshot.Snapshotter` every k steps (device copy, background D2H + XOR
  parity over 4 nodes),
* orbax ``CheckpointManager`` async checkpoints to local disk every k steps,

and writes ``benchmarks/results/train_ft.md``: time per step, overhead vs baseline, snapshot
latency (start -> complete) and the expected lost work per failure, ``k/2`` steps plus the latency.
"""

import argparse
import datetime
import pathlib
import platform
import shutil
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxparams.scale.tokenformer import TokenFormerConfig
from jaxparams.train import data, optim, snapshot, trainer
from jaxparams.train import step as train_step_lib
from jaxparams.train import mesh as train_mesh


def measure(steps: int, every: int, mode: str, tmp: pathlib.Path) -> dict:
  mesh = trainer.make_mesh(1)
  cfg = TokenFormerConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, qkv_tokens=64,
                          out_tokens=64, ffn_tokens=256, max_len=64)
  features = optim.OptimFeatures(grad_clip=1.0, b1=0.9, b2=0.95, weight_decay=0.1)
  model = train_step_lib.build_model("tokenformer", cfg, features, mesh, 64)
  corpus = data.load_corpus(max_bytes=300_000)
  bs = NamedSharding(mesh, P("data"))
  batches = [train_mesh.put(data.train_batch(corpus, step=i, batch_size=16, seq_len=64, seed=0),
                            bs) for i in range(steps)]
  params = model.init_params(np.asarray(jax.random.PRNGKey(0)))
  opt = model.init_opt(params)
  key = np.asarray(jax.random.PRNGKey(1))
  params, opt, _ = model.train_step(params, opt, batches[0], np.float32(1e-3), key)  # compile
  jax.block_until_ready(params)
  snap = snapshot.Snapshotter(4) if mode == "memory" else None
  mgr = None
  if mode == "orbax":
    d = tmp / f"orbax_{every}"
    shutil.rmtree(d, ignore_errors=True)
    mgr = ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(
        max_to_keep=2, create=True, enable_async_checkpointing=True))
  latencies = []
  t0 = time.perf_counter()
  for i in range(steps):
    params, opt, _ = model.train_step(params, opt, batches[i], np.float32(1e-3), key)
    if mode != "none" and (i + 1) % every == 0:
      ts = time.perf_counter()
      state = {"params": params, "opt_state": opt, "rng": key}
      if snap is not None:
        snap.snapshot(i + 1, state)
        snap._future.add_done_callback(  # pylint: disable=protected-access
            lambda f, ts=ts: latencies.append(time.perf_counter() - ts))
      else:
        mgr.save(i + 1, args=ocp.args.StandardSave(state))
  jax.block_until_ready(params)
  if snap is not None:
    snap.close()
  if mgr is not None:
    ts = time.perf_counter()
    mgr.wait_until_finished()
    latencies.append(time.perf_counter() - ts)
    mgr.close()
  per_step = (time.perf_counter() - t0) / steps
  return {"per_step": per_step, "latency": float(np.mean(latencies)) if latencies else 0.0,
          "state_mb": sum(x.nbytes for x in jax.tree.leaves((params, opt))) / 1e6}


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--steps", type=int, default=40)
  ap.add_argument("--every", type=int, nargs="+", default=[1, 5, 10])
  args = ap.parse_args()
  tmp = pathlib.Path(tempfile.mkdtemp())
  base = measure(args.steps, 1, "none", tmp)
  rows = [("none", "-", base, 0.0)]
  for every in args.every:
    for mode in ("memory", "orbax"):
      r = measure(args.steps, every, mode, tmp)
      rows.append((mode, every, r, r["per_step"] / base["per_step"] - 1.0))
  shutil.rmtree(tmp, ignore_errors=True)
  lines = [f"# In-memory snapshots vs orbax async checkpoints ({datetime.date.today()}, "
           f"{platform.machine()} CPU x{jax.device_count()} devices, 2 cores shared with other "
           f"jobs: noisy)", "",
           f"TokenFormer byte LM, state (params + Adam) {base['state_mb']:.1f} MB, "
           f"{args.steps} steps of batch 16 x 64. Memory: device copy + background D2H + XOR "
           f"parity over 4 nodes (each keeps 1/3 of the state). Orbax: async CheckpointManager "
           f"to local disk. Expected lost work per failure = every/2 steps + latency.", "",
           "| snapshots | every k | s / step | overhead | latency (s) | expected lost work (s) |",
           "|---|---|---|---|---|---|"]
  for mode, every, r, over in rows:
    lost = "-" if every == "-" else f"{every / 2 * base['per_step'] + r['latency']:.3f}"
    lines.append(f"| {mode} | {every} | {r['per_step']:.4f} | {over:+.1%} | {r['latency']:.3f} "
                 f"| {lost} |")
  out = pathlib.Path(__file__).parent / "results" / "train_ft.md"
  out.write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
