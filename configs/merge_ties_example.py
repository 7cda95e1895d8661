"""A TIES merge recipe as an ml-collections config (same keys as mergekit YAML).

Run it with ``jaxparams merge configs/merge_ties_example.py OUT_DIR`` (model
paths are relative to the current directory, as in mergekit). The YAML
equivalent::

  merge_method: ties
  base_model: ./checkpoints/base
  models:
    - model: ./checkpoints/base
    - model: ./checkpoints/math
      parameters: {weight: 0.6, density: 0.5}
    - model: ./checkpoints/code
      parameters:
        weight:
          - {filter: self_attn, value: 0.3}
          - {value: 0.4}
        density: [0.3, 0.7]          # a gradient over the layers
  parameters: {normalize: true, lambda: 1.0}
  dtype: float32
  tokenizer_source: base

Example:
  >>> get_config().merge_method
  'ties'
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The recipe; override fields on the command line or in Python."""
  c = ml_collections.ConfigDict()
  c.merge_method = "ties"
  c.base_model = "./checkpoints/base"
  c.models = [
      {"model": "./checkpoints/base"},
      {"model": "./checkpoints/math", "parameters": {"weight": 0.6, "density": 0.5}},
      {"model": "./checkpoints/code",
       "parameters": {"weight": [{"filter": "self_attn", "value": 0.3}, {"value": 0.4}],
                      "density": [0.3, 0.7]}},
  ]
  c.parameters = {"normalize": True, "lambda": 1.0}
  c.dtype = "float32"
  c.tokenizer_source = "base"
  return c
