"""StreamAdapter: in-context demonstrations turned into a weight update at test time.

After Muhtar et al. (arXiv 2411.09289). The demonstrations' key/value states are summarised by
learnable queries chunk by chunk and folded by a gated recurrence into a fixed-size context state
per layer (:func:`context_state`); learned low-rank projections map it to an additive, LoRA-shaped
update of the model's own matrices (:func:`absorb`), and the query then runs alone
(:func:`query_logits`), at a cost that does not grow with the number of demonstrations.

* :mod:`.tasks`: the synthetic in-context task family (random token mappings).
* :mod:`.context`: key/value features of the demonstrations, chunking.
* :mod:`.adapter`: the context mapping and the weight absorption.
* :mod:`.training`: the base model's ICL training, the adapter's training (base frozen), LoRA
  test-time training, evaluation and cost.
* :mod:`.pipeline`: the whole run from a config (``python -m jaxparams.train
  --config=configs/streamadapter.py``).

Example:
  >>> from jaxparams.adapt import streamadapter as sa
  >>> sa.StreamAdapterConfig(num_queries=4).num_queries
  4
"""

from jaxparams.adapt.streamadapter.adapter import (StreamAdapterConfig, absorb,
                                                   adapter_from_context, context_state, init,
                                                   query_logits, state_from_chunks, target_paths)
from jaxparams.adapt.streamadapter.context import chunk, feature_dim, kv_features
from jaxparams.adapt.streamadapter import pipeline
from jaxparams.adapt.streamadapter.tasks import TaskFamily, ideal_icl_accuracy
from jaxparams.adapt.streamadapter.training import (AdapterTrainConfig, BaseTrainConfig,
                                                    LoraTTTConfig, TaskPool, adapter_loss,
                                                    evaluate, icl_accuracy, lora_ttt, train_adapter,
                                                    train_base)

__all__ = [
    "StreamAdapterConfig", "absorb", "adapter_from_context", "context_state", "init",
    "query_logits", "state_from_chunks", "target_paths", "chunk", "feature_dim", "kv_features",
    "TaskFamily", "ideal_icl_accuracy", "AdapterTrainConfig", "BaseTrainConfig", "LoraTTTConfig",
    "TaskPool", "adapter_loss", "evaluate", "icl_accuracy", "lora_ttt", "train_adapter",
    "train_base", "pipeline",
]
