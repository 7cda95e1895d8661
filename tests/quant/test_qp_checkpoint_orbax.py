"""The orbax quantized checkpoint is written atomically: all of it, or nothing under its name."""

import jax
import pytest

from jaxparams import io as jio
from jaxparams.quant import checkpoint as C
from jaxparams.quant import checkpoint_orbax
from jaxparams.quant.rtn import RTNConfig, rtn


def test_orbax_save_is_atomic_and_round_trips(tmp_path, monkeypatch):
  qa = rtn(jax.random.normal(jax.random.key(0), (64, 8)), RTNConfig(bits=4, group_size=32))
  tree = {"dense": {"kernel": qa, "bias": jax.numpy.ones(8)}}
  out = tmp_path / "q"
  real = jio.save_orbax

  def broken(t, path, **kw):
    real(t, path, **kw)          # the arrays are written, then the run dies
    raise KeyboardInterrupt

  monkeypatch.setattr(jio, "save_orbax", broken)
  with pytest.raises(KeyboardInterrupt):
    C.save_quantized_orbax(tree, out)
  assert not out.exists() and list(tmp_path.iterdir()) == []
  monkeypatch.setattr(jio, "save_orbax", real)
  assert C.save_quantized_orbax is checkpoint_orbax.save_quantized_orbax
  C.save_quantized_orbax(tree, out)
  back = C.load_quantized_orbax(out)
  assert bool((back["dense"]["kernel"].codes == qa.codes).all())
  assert sorted(p.name for p in out.iterdir()) == ["arrays", C.LAYOUT_FILE]
  with pytest.raises(FileExistsError):
    C.save_quantized_orbax(tree, out)
