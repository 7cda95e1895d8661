"""The model card (``README.md``) and ``mergekit_config.yml`` of a merge, as mergekit writes them.

mergekit (``mergekit/card.py``, ``merge.py``) writes, unless ``--no-write-model-card``,
a card with YAML front matter (``base_model``: the Hub ids among the inputs, ``tags:
[mergekit, merge]``, ``library_name: transformers``), the method, the base model (not
for ``slerp``), the other models and the recipe, plus the recipe itself as
``mergekit_config.yml``. The same layout is written here, saying it was made with
jaxparams; a path is a Hub id when it is not absolute, has at most one ``/`` and does
not exist locally (mergekit asks the Hub when it exists; nothing here uses the
network).

Example:
  >>> from jaxparams.merge.recipe import parse_recipe
  >>> r = parse_recipe({'merge_method': 'ties', 'base_model': 'org/base',
  ...                   'models': [{'model': 'org/ft', 'parameters': {'weight': 1.0}}]})
  >>> card = model_card(r, recipe_yaml(r), 'merged')
  >>> card.splitlines()[1:5]
  ['base_model:', '- org/base', '- org/ft', 'library_name: transformers']
  >>> 'using [org/base](https://huggingface.co/org/base) as a base' in card
  True
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from jaxparams.merge.recipe import Recipe

__all__ = ["model_card", "recipe_yaml", "is_hub_id"]

_CARD = """---
{metadata}---
# {name}

This is a merge of pre-trained language models created with jaxparams, which runs
[mergekit](https://github.com/arcee-ai/mergekit) recipes and merge methods in JAX.

## Merge Details
### Merge Method

This model was merged using the {method} merge method{base_text}.

### Models Merged

The following models were included in the merge:
{model_list}

### Configuration

The following YAML configuration was used to produce this model:

```yaml
{config_yaml}
```
"""

_REFS = {
    "linear": ("Linear", "https://arxiv.org/abs/2203.05482"),
    "slerp": ("SLERP", "https://en.wikipedia.org/wiki/Slerp"),
    "task_arithmetic": ("Task Arithmetic", "https://arxiv.org/abs/2212.04089"),
    "ties": ("TIES", "https://arxiv.org/abs/2306.01708"),
    "dare_ties": ("DARE TIES", "https://arxiv.org/abs/2311.03099"),
    "dare_linear": ("Linear DARE", "https://arxiv.org/abs/2311.03099"),
    "breadcrumbs": ("Model Breadcrumbs", "https://arxiv.org/abs/2312.06795"),
    "breadcrumbs_ties": ("Model Breadcrumbs with TIES", "https://arxiv.org/abs/2312.06795"),
    "della": ("DELLA", "https://arxiv.org/abs/2406.11617"),
    "della_linear": ("Linear DELLA", "https://arxiv.org/abs/2406.11617"),
    "model_stock": ("Model Stock", "https://arxiv.org/abs/2403.19522"),
    "sce": ("SCE", "https://arxiv.org/abs/2408.07990"),
    "karcher": ("Karcher Mean", "https://en.wikipedia.org/wiki/Karcher_mean"),
}


def is_hub_id(path: str) -> bool:
  """mergekit's rule without the network: not absolute, <= one ``/``, not a local path.

  Example:
    >>> is_hub_id('meta-llama/Llama-3.2-1B'), is_hub_id('/models/x'), is_hub_id('a/b/c')
    (True, False, False)
  """
  if not path or path[0] in "/~" or path.count("/") > 1:
    return False
  return not os.path.exists(path)


def _clean(x: Any) -> Any:
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return {f.name: _clean(getattr(x, f.name)) for f in dataclasses.fields(x)
            if f.name != "source" and getattr(x, f.name) not in (None, {}, ())}
  if isinstance(x, Mapping):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  return x


def recipe_yaml(recipe: Recipe, original: Any = None) -> str:
  """The recipe as YAML: a YAML file's own text when it came from one, else a dump."""
  if isinstance(original, (str, Path)) and Path(original).suffix in (".yml", ".yaml"):
    return Path(original).read_text(encoding="utf-8")
  if isinstance(original, Mapping):
    return yaml.safe_dump(_clean(dict(original)), sort_keys=False)
  return yaml.safe_dump(_clean(recipe), sort_keys=False)


def _link(path: str) -> str:
  return f"[{path}](https://huggingface.co/{path})" if is_hub_id(path) else path


def model_card(recipe: Recipe, config_yaml: str, name: str) -> str:
  """The ``README.md`` of a merged model (mergekit's card layout)."""
  refs = recipe.model_names()
  hub = [r for r in refs if is_hub_id(r)]
  base = None if recipe.merge_method == "slerp" else recipe.base_model
  pretty, url = _REFS.get(recipe.merge_method, (recipe.merge_method, None))
  method = f"[{pretty}]({url})" if url else pretty
  meta = yaml.safe_dump({"base_model": hub, "tags": ["mergekit", "merge"],
                         "library_name": "transformers"})
  return _CARD.format(
      metadata=meta, name=name or "Untitled Model (1)", method=method,
      base_text=f" using {_link(base)} as a base" if base else "",
      model_list="\n".join(f"* {_link(r)}" for r in refs if r != base),
      config_yaml=config_yaml.rstrip("\n"))
