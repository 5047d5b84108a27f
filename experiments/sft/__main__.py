"""Entry point: ``python -m experiments.sft --config=<config file>``."""

from absl import app

from experiments.sft import main

if __name__ == "__main__":
    app.run(main.main)
