"""Single-digit sums and differences (reasoning-gym ``chain_sum``): the default SFT config.

Reproduces: the paper's SFT setting (fine-tune a pre-trained LM with an f-divergence loss on
the response tokens) at laptop scale: the base model is the tiny KJV Bible model of
``experiments/pretrain/configs/tiny.py`` pre-trained with the KL loss (cross-entropy, the usual
base), fine-tuned on "State the final answer to the following arithmetic problem: a ± b ="
→ answer, a, b ∈ 0…9 (200 distinct questions; a quarter held out by a hash of the question, so
the test problems are never seen in training). Quality is the exact-match accuracy of greedy
and sampled answers. The paper's models and instruction data are not available; the loss
(divergence and reference measure q) is what varies.

Hardware: CPU. Time: about 1 minute of CPU (measured: 64–77 s user, 110–122 s wall for kl and
alpha:1.5 with uniform q on a 2-core Intel Xeon shared with other jobs), after the base
pre-training run.

    python -m experiments.pretrain --config=experiments/pretrain/configs/tiny.py \\
        --config.loss.divergence=kl --config.loss.q=uniform
    python -m experiments.sft --config=experiments/sft/configs/arithmetic.py
"""

import ml_collections

from experiments.sft.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.name = "arithmetic"
    c.base.workdir = "runs/pretrain/tiny/kl-uniform-seed0"
    c.data.task = "chain_sum"
    c.data.task_kwargs = ml_collections.ConfigDict(
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    )
    c.data.train_size = 2000
    c.data.test_size = 200
    c.data.seq_len = 40  # 32 prompt tokens + up to 3 answer tokens + eos (KJV SentencePiece).
    c.loss.divergence = "alpha:1.5"
    c.loss.q = "uniform"
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 20
    c.train.batch_size = 32
    c.train.steps = 300
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 150
    return c
