#!/usr/bin/env bash
# The main job of the README: set up (idempotent), then train and evaluate the default
# classification config (Fashion-MNIST, small CNN, alpha:1.5 loss) and append its result row.
# Extra arguments are passed on, e.g. --config.loss.divergence=kl.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python -m experiments.classification \
  --config=experiments/classification/configs/fashion_mnist.py "$@"
