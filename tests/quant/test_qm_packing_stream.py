"""The GPTQ bit-stream packer against the bit string written out by hand."""

import numpy as np
import pytest

from jaxparams.quant import packing
from jaxparams.quant.checkpoint import gptq_pack, gptq_unpack


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_stream_is_lsb_first_bit_string(bits):
  rng = np.random.default_rng(bits)
  q = rng.integers(0, 2 ** bits, (32 * 3, 2))
  words = packing.pack_stream(q, bits).view(np.uint32)
  for col in range(2):
    stream = "".join(format(int(v), f"0{bits}b")[::-1] for v in q[:, col])   # LSB first
    want = [int(stream[i:i + 32][::-1], 2) for i in range(0, len(stream), 32)]
    assert words[:, col].tolist() == want
  np.testing.assert_array_equal(packing.unpack_stream(words.view(np.int32), bits, 96), q)
  if bits != 3:   # for 2/4/8 bits the stream is the QArray layout
    np.testing.assert_array_equal(words, np.asarray(packing.pack(q, bits)))
  np.testing.assert_array_equal(gptq_unpack(gptq_pack(q.T, bits, axis=1), bits, 96, axis=1), q.T)
  with pytest.raises(ValueError, match="whole 32-bit words"):
    gptq_pack(q[:5], bits)
