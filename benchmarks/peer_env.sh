#!/usr/bin/env bash
# Builds the PyTorch peer environment that benchmarks/peer_checks.py (and the other peer
# comparisons under benchmarks/) run against: torch 2.13.0 (CPU), transformers, PEFT and
# mergekit, in a virtual environment of its own, outside the project's environments.
#
#   bash benchmarks/peer_env.sh [DIR]        # default DIR: ./.venv-peer (git-ignored)
#   python benchmarks/peer_checks.py --peer DIR/bin/python --out peer_checks.json
#
# Never a dependency of jaxparams: the README's two set-up commands install no torch.
set -euo pipefail
dir="${1:-.venv-peer}"
python3 -m venv "$dir"
"$dir/bin/pip" install -q torch==2.13.0
"$dir/bin/pip" install -q transformers peft==0.21.2 "mergekit==0.1.5" numpy safetensors
"$dir/bin/python" -c "import torch, transformers, peft; print('peer env:', torch.__version__, transformers.__version__, peft.__version__)"
