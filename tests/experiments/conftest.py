"""Fixtures for the experiment tests: a tiny, offline classification config."""

import sys
from pathlib import Path

import ml_collections
import pytest
from exputil import REPO

# `experiments` is not installed (only fdiv is): import it from this checkout.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from experiments.classification.configs import fashion_mnist


@pytest.fixture
def tiny_config(tmp_path: Path) -> ml_collections.ConfigDict:
    """Fashion-MNIST, 512 training and 300 test images (the last test batch is padded), 6 steps."""
    c = fashion_mnist.get_config()
    c.workdir = str(tmp_path / "run")
    c.results_csv = str(tmp_path / "results.csv")
    c.data.train_size = 512
    c.data.test_size = 300
    c.train.batch_size = 64
    c.train.steps = 6
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = 3
    c.optim.warmup_steps = 2
    c.eval.batch_size = 128
    return c
