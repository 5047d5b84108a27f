#!/usr/bin/env bash
# The test command of the README: set up if needed, then the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python -m pytest -n 2 "$@"
