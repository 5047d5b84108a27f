"""Entry point: ``python -m experiments.classification --config=<config file>``."""

from absl import app

from experiments.classification import main

if __name__ == "__main__":
    app.run(main.main)
