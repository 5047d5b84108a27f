"""Entry point: ``python -m experiments.pretrain --config=<config file>``."""

from absl import app

from experiments.pretrain import main

if __name__ == "__main__":
    app.run(main.main)
