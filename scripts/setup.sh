#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv keyed on requirements.txt, fdiv installed editable,
# and the offline datasets from Debian packages where apt exists.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp="$venv/.requirements.sha256"
want=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python dependencies into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r requirements.txt
  "$venv/bin/pip" install -q --no-deps -e .
  echo "$want" > "$stamp"
else
  echo "[setup] $venv is up to date"
fi

# The CPU kernels of the root (power laws, Jensen–Shannon: fdiv/cpu_kernel.py), compiled once
# per source and machine into ~/.cache/fdiv; without a compiler fdiv falls back to its JAX solver.
"$venv/bin/python" -c "from fdiv import cpu_kernel; print('[setup] CPU kernels:', cpu_kernel.build())" ||
  echo "[setup] WARNING: the CPU kernels did not build; solver='auto' will use JAX Newton" >&2

# Offline data: Fashion-MNIST (classification), the King James Bible and the Python
# documentation (language modelling).
need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v bible >/dev/null || need+=(bible-kjv-text bible-kjv)
[ -f /usr/share/info/python3.11.info.gz ] || need+=(python3.11-doc)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian packages: ${need[*]}"
    apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "[setup] WARNING: missing offline data packages (${need[*]}); install them with apt," \
      "or let tensorflow-datasets download the data where a network is reachable." >&2
  fi
fi
