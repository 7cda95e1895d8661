"""Adapters (LoRA, DoRA, PEFT interop): being built.

Example:
  >>> import jaxparams.adapt
"""

__all__: list[str] = []
