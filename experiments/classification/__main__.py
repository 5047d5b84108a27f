"""Entry point: ``python -m experiments.classification --config=<config file>``."""

from experiments.classification import main
from experiments.common import entry

if __name__ == "__main__":
    entry.run_module(main.main, main.DEFAULT_CONFIG)
