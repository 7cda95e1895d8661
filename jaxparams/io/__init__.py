"""Checkpoint I/O: lazy safetensors (HF names, sharded), atomic writes, orbax.

Example:
  >>> import numpy as np, tempfile, os
  >>> import jaxparams as jp
  >>> out = os.path.join(tempfile.mkdtemp(), 'ckpt')
  >>> jp.io.save_safetensors({'w': np.ones((2, 2), np.float32)}, out)
  >>> with jp.io.open_checkpoint(out) as ckpt:
  ...   ckpt.spec('w').shape
  (2, 2)
"""

import numpy as np

from jaxparams.io.any_checkpoint import is_orbax_dir, load_any
from jaxparams.io.calibration_text import read_calibration_text
from jaxparams.io.atomic import (atomic_dir, check_output_dir, check_writable, publish_dir,
                                 sweep_stale)
from jaxparams.io.convert import convert_checkpoint
from jaxparams.io.listing import checkpoint_rows
from jaxparams.io.dtypes import parse_dtype, to_numpy_dtype, to_safetensors_dtype
from jaxparams.io.interrupt import finish_before_interrupt
from jaxparams.io.orbax_io import restore_orbax, save_orbax
from jaxparams.io.paths import resolve_inside
from jaxparams.io.pickle_guard import refuse_pickle
from jaxparams.io.safetensors_header import DTYPE_BITS, parse_header
from jaxparams.io.safetensors_reader import (INDEX_NAME, SafetensorsFile, SafetensorsReader,
                                             TensorSpec, open_checkpoint)
from jaxparams.io.sizes import parse_size
from jaxparams.io.text_files import parse_json, read_bytes, read_json, read_text
from jaxparams.io.adapter_config import AdapterConfig, check_adapter_config, read_adapter_config
from jaxparams.io.model_config import check_model_config, read_model_config
from jaxparams.io.requests_file import RequestRow, read_request_rows
from jaxparams.io.tokenizer_file import load_tokenizer_file, read_tokenizer_json
from jaxparams.io.safetensors_writer import (SENTENCE_TRANSFORMERS_FILES, TOKENIZER_FILES,
                                             SafetensorsWriter, check_output_tensor,
                                             save_safetensors, write_safetensors_file)


def load_safetensors(path):
  """Reads every tensor of a checkpoint into memory as ``{name: np.ndarray}``.

  Prefer :func:`open_checkpoint` for large models (one tensor at a time).

  Example:
    >>> import numpy as np, tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), 'c')
    >>> save_safetensors({'w': np.ones(2, np.float32)}, out)
    >>> load_safetensors(out)['w'].tolist()
    [1.0, 1.0]
  """
  with open_checkpoint(path) as ckpt:
    return {n: np.array(a) for n, a in ckpt.items()}


__all__ = [
    "DTYPE_BITS", "INDEX_NAME", "SENTENCE_TRANSFORMERS_FILES", "TOKENIZER_FILES",
    "SafetensorsFile", "SafetensorsReader", "SafetensorsWriter", "TensorSpec", "atomic_dir",
    "check_output_tensor",
    "check_output_dir", "check_writable", "checkpoint_rows", "convert_checkpoint", "finish_before_interrupt", "is_orbax_dir", "load_any",
    "load_safetensors", "open_checkpoint", "parse_dtype", "parse_header", "parse_size",
    "parse_json", "publish_dir", "read_calibration_text", "read_json", "read_text", "refuse_pickle",
    "resolve_inside", "restore_orbax",
    "save_orbax", "save_safetensors", "sweep_stale", "to_numpy_dtype", "to_safetensors_dtype",
    "write_safetensors_file", "read_bytes", "AdapterConfig", "check_adapter_config",
    "read_adapter_config", "check_model_config", "read_model_config", "RequestRow",
    "read_request_rows", "load_tokenizer_file", "read_tokenizer_json",
]
