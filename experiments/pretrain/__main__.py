"""Entry point: ``python -m experiments.pretrain --config=<config file>``.

The ``--config`` flag is defined here, not in ``main``, so that tests can import the ``main`` of
several experiments into one process.
"""

from absl import app
from ml_collections import config_flags

from experiments.pretrain import main

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    main.DEFAULT_CONFIG,
    "Config file; override keys with --config.<key>=<value>.",
    lock_config=True,
)

if __name__ == "__main__":
    app.run(lambda argv: main.main(argv, _CONFIG.value))
