"""PEFT adapter folders in and out (compatibility module: the format and the tree conversion
are two files).

* :mod:`jaxparams.adapt.peft_format`: the folder (``adapter_config.json`` +
  ``adapter_model.safetensors``), :class:`PeftAdapter`, :func:`read_peft`, :func:`write_peft`.
* :mod:`jaxparams.adapt.peft_tree`: HF module names <-> adapter trees for a model config
  (:func:`to_tree`, :func:`from_tree`, :func:`load_peft`, :func:`save_peft`, :func:`module_map`).

Example:
  >>> read_peft is peft_format.read_peft and load_peft is peft_tree.load_peft
  True
"""

from jaxparams.adapt import peft_format, peft_tree  # noqa: F401  (the two halves)
from jaxparams.adapt.peft_format import (CONFIG_NAME, PREFIX, WEIGHTS_NAME, PeftAdapter,
                                         make_config, pattern_value, read_peft, write_peft)
from jaxparams.adapt.peft_tree import (apply_overrides, from_tree, load_peft, module_map,
                                       save_peft, to_tree)

__all__ = ["PeftAdapter", "read_peft", "write_peft", "to_tree", "from_tree", "load_peft",
           "apply_overrides", "save_peft", "pattern_value", "module_map", "make_config", "PREFIX",
           "CONFIG_NAME", "WEIGHTS_NAME"]
