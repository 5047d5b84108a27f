"""Entry point: ``python -m experiments.distill --config=<config file>``."""

from absl import app

from experiments.distill import main

if __name__ == "__main__":
    app.run(main.main)
