"""Entry point: ``python -m experiments.sft --config=<config file>``."""

from experiments.common import entry
from experiments.sft import main

if __name__ == "__main__":
    entry.run_module(main.main, main.DEFAULT_CONFIG)
