"""SparseGPT and Wanda against llmcompressor's per-layer implementations (committed fixture made
by tests/fixtures/make_llmcompressor_prune_fixture.py), with our calibration statistics."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.calib import InputStats

FIX = np.load(Path(__file__).parents[1] / "fixtures" / "llmcompressor_prune.npz")
FIELDS = {"u50": {"sparsity": 0.5}, "nm24": {"pattern": "2:4"}}


@pytest.mark.parametrize("tag", ["u50", "nm24"])
def test_sparsegpt_and_wanda_match_llmcompressor(tag):
  x, w_hf = FIX["x"], FIX["w"]
  stats = InputStats.from_inputs(jnp.asarray(x))           # our one statistics type
  params = {"layer": {"kernel": jnp.asarray(w_hf.T)}}      # Flax kernel = HF weight^T
  for method, extra in (("sparsegpt", {"block_size": 16}), ("wanda", {})):
    out, _ = jp.prune.prune_tree(params, method, stats={"layer/kernel": stats}, **FIELDS[tag],
                                 **extra)
    ours = np.asarray(out["layer"]["kernel"]).T
    peer = FIX[f"{method}_{tag}"]
    assert ((ours == 0) == (peer == 0)).all(), method           # identical masks
    np.testing.assert_allclose(ours, peer, rtol=2e-4, atol=2e-5, err_msg=method)
    err_ours = np.linalg.norm(x @ (w_hf - ours).T)
    err_peer = np.linalg.norm(x @ (w_hf - peer).T)
    assert err_ours == pytest.approx(err_peer, rel=1e-4)
