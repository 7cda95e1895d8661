"""LLM in a flash: run a model larger than its memory budget from safetensors on disk.

* ``bundle.py``: row-column bundling as a streaming-driver record (and its exact inverse).
* ``sparsity.py``: ReLU FFNs (relufication + brief fine-tune), FFN sparsity per layer on text.
* ``predictor.py``: low-rank predictors of active neurons, trained from captured FFN inputs.
* ``neurons.py``: the preallocated neuron matrix (swap-on-delete) and windowing.
* ``reads.py``: parallel ``os.preadv`` reads of neuron chunks, page cache control.
* ``runtime.py``: token-by-token greedy decoding with resident attention and FFN neurons
  loaded on demand under a memory budget.
"""

from jaxparams.flash.bundle import (BUNDLE_KEY, LAYOUTS, BundleConfig, bundle, bundle_name,
                                    bundle_record, bundled_layers, is_bundled, split_record,
                                    unbundle, unbundle_record)
from jaxparams.flash.neurons import NeuronMatrix, Window
from jaxparams.flash.predictor import (LayerPredictor, expand_predictor, load_predictors,
                                       predicted_loss, predicted_perplexity,
                                       predictor_metrics, save_predictors, train_predictors)
from jaxparams.flash.reads import ChunkReader, aligned_empty
from jaxparams.flash.runtime import FlashConfig, FlashModel, prepare_layout, rss_bytes
from jaxparams.flash.sparsity import (active_neurons, byte_ids, ffn_inputs, ffn_sparsity,
                                      finetune, lm_loss, perplexity, relufy)

__all__ = ["BUNDLE_KEY", "LAYOUTS", "BundleConfig", "ChunkReader", "FlashConfig", "FlashModel",
           "LayerPredictor", "NeuronMatrix", "Window", "active_neurons", "aligned_empty", "bundle",
           "bundle_name", "bundle_record", "bundled_layers", "byte_ids", "expand_predictor",
           "ffn_inputs", "ffn_sparsity", "finetune", "is_bundled", "lm_loss", "load_predictors",
           "perplexity", "predicted_loss", "predicted_perplexity", "predictor_metrics", "prepare_layout", "relufy", "rss_bytes",
           "save_predictors", "split_record", "train_predictors", "unbundle", "unbundle_record"]
