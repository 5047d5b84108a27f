"""Fashion-MNIST, small CNN: the default classification config (runs on a laptop CPU).

Reproduces: the paper's classification experiment (f-divergence losses on an image classifier),
at a size that runs anywhere: full Fashion-MNIST (60k train / 10k test, Debian package
dataset-fashion-mnist), a 2-conv CNN (16 and 32 channels, 128 hidden; 30k parameters), AdamW,
2 epochs (938 steps of 128). The paper's own architectures and settings are not published;
the loss (divergence and reference measure q) is what varies.

Hardware: CPU. Time: about 1 minute on a 2-core Intel Xeon (one core per run when two runs
share it in the sweep), i.e. ~25–35 min for the 48-run sweep in
``experiments/classification/sweeps.py`` with ``--max-parallel 2``.

    python -m experiments.classification \\
        --config=experiments/classification/configs/fashion_mnist.py
"""

import ml_collections

from experiments.classification.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.name = "fashion_mnist"
    c.data.name = "fashion_mnist"
    c.model.name = "cnn"
    c.model.channels = (16, 32)
    c.model.hidden = 128
    c.loss.divergence = "alpha:1.5"
    c.loss.q = "uniform"
    c.optim.name = "adamw"
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 1e-4
    c.optim.grad_clip_norm = 1.0
    c.train.batch_size = 128
    c.train.steps = 938  # 2 epochs of 60k.
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 250
    return c
