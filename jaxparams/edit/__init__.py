"""Editing and adaptation (ROME/MEMIT, LoRA/DoRA merge and unmerge): not built yet.

This area has no issue yet; task vectors and PortLLM patches live in
:mod:`jaxparams.merge`. The package exists so the layout is complete.
"""

__all__: list[str] = []
