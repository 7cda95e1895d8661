"""Outputs checked before publishing (issue 25): NaN/Inf, shape and dtype of written tensors."""

import os

import ml_dtypes
import numpy as np
import pytest

from jaxparams import io as jio
from jaxparams.transform import StreamTask, Transform, checks, stream_checkpoints


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_found_at_its_index(dtype, bad):
  a = np.arange(50, dtype=np.float32).astype(dtype)
  a[37] = bad
  with pytest.raises(ValueError, match=r"output tensor 'w' .*element 37 is"):
    jio.check_output_tensor("w", a.reshape(5, 10))
  jio.check_output_tensor("w", np.arange(50, dtype=np.float32).astype(dtype))  # finite: passes


def test_largest_finite_values_pass_and_ints_are_not_checked():
  for dt in (np.float16, ml_dtypes.bfloat16, np.float32):
    jio.check_output_tensor("w", np.array([np.finfo(dt).max, -np.finfo(dt).max], dt))
  jio.check_output_tensor("q", np.full(4, 0x7F800000, np.uint32))  # packed codes: no NaN
  jio.check_output_tensor("q", np.full(4, -1, np.int32))


def test_shape_and_dtype_expectations():
  with pytest.raises(ValueError, match=r"'w' has shape \(2,\), expected \(3,\)"):
    jio.check_output_tensor("w", np.zeros(2, np.float32), shape=(3,))
  with pytest.raises(ValueError, match="'w' has dtype float32, expected float16"):
    jio.check_output_tensor("w", np.zeros(2, np.float32), dtype=np.float16)


def test_writer_refuses_and_publishes_nothing(tmp_path):
  out = tmp_path / "out"
  with pytest.raises(ValueError) as e:
    with jio.SafetensorsWriter(out, check_outputs=True) as w:
      w.add("a", np.ones(3, np.float32))
      w.add("b", np.array([1.0, np.nan], np.float32))
  assert "'b'" in str(e.value) and "\n" not in str(e.value)
  assert os.listdir(tmp_path) == []
  with jio.SafetensorsWriter(out) as w:  # off by default: conversions keep sources as they are
    w.add("b", np.array([1.0, np.nan], np.float32))
  assert np.isnan(jio.load_safetensors(out)["b"][1])


def _scale_record():
  import dataclasses  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass(frozen=True, kw_only=True)
  class C:
    factor: float = 2.0
  return Transform(name="scale", fn=lambda x, c: x * c.factor, config=C,
                   array_params=("factor",), checks=(checks.finite,))


def test_stream_driver_overflow_in_output_dtype(tmp_path):
  """finite in float32, inf once cast to float16: refused, nothing published."""
  jio.save_safetensors({"a": np.full(4, 1000.0, np.float16), "b": np.ones(2, np.float16)},
                       tmp_path / "in")
  rec = _scale_record()
  tasks = [StreamTask("b", (("in", "b"),)),
           StreamTask("a", (("in", "a"),), rec, rec.make_config(factor=100.0),
                      compute_dtype=np.float32, out_dtype=np.float16)]
  with jio.open_checkpoint(tmp_path / "in") as r:
    with pytest.raises(ValueError, match=r"output tensor 'a' \(float16.*float16 range"):
      stream_checkpoints(tasks, {"in": r}, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["in"]
    # the same with factor 10 (10,000 fits float16): written, values exact
    tasks[1] = StreamTask("a", (("in", "a"),), rec, rec.make_config(factor=10.0),
                          compute_dtype=np.float32, out_dtype=np.float16)
    stream_checkpoints(tasks, {"in": r}, tmp_path / "out")
  np.testing.assert_array_equal(jio.load_safetensors(tmp_path / "out")["a"],
                                np.full(4, 10000.0, np.float16))


def test_stream_driver_copy_of_nan_refused_unless_allowed(tmp_path):
  jio.save_safetensors({"a": np.array([np.nan, 1], np.float32)}, tmp_path / "in")
  with jio.open_checkpoint(tmp_path / "in") as r:
    with pytest.raises(ValueError, match="output tensor 'a'"):
      stream_checkpoints([StreamTask("a", (("in", "a"),))], {"in": r}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    stream_checkpoints([StreamTask("a", (("in", "a"),))], {"in": r}, tmp_path / "out",
                       skip=("finite",))
  assert np.isnan(jio.load_safetensors(tmp_path / "out")["a"][0])


def test_stream_driver_checks_result_shape(tmp_path):
  """A record whose result has another shape than the task's out_shape: refused."""
  jio.save_safetensors({"a": np.ones((2, 3), np.float32)}, tmp_path / "in")
  import dataclasses  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass(frozen=True, kw_only=True)
  class C:
    pass
  rec = Transform(name="transpose", fn=lambda x, c: x.T, config=C)
  with jio.open_checkpoint(tmp_path / "in") as r:
    with pytest.raises(ValueError, match=r"output tensor 'a' has shape \(3, 2\), expected "
                                         r"\(2, 3\)"):
      stream_checkpoints([StreamTask("a", (("in", "a"),), rec, C(), out_shape=(2, 3))],
                         {"in": r}, tmp_path / "out")
  assert sorted(os.listdir(tmp_path)) == ["in"]
