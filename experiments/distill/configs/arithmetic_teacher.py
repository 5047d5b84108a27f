"""The teacher of distillation on the SFT task: an SFT config (run it with ``experiments.sft``).

Reproduces: the teacher of the paper's distillation setting on a verifiable task, at laptop
scale: the 4-layer KL teacher of ``teacher.py`` (d_model 128, pre-trained on the KJV Bible)
fine-tuned on the single-digit sums and differences of ``experiments/sft/configs/arithmetic.py``
(same problems, split and schedule) with the KL loss (cross-entropy, so its softmax, the
distillation target, is its own operator). It lives here, not in experiments/sft/configs, because
only distillation uses it; its result row goes to results/distill_sft_teacher.csv, not the SFT
table.

Hardware: CPU. Time: about 1.5 minutes of CPU (measured: 89 s user, 140 s wall on a 2-core
Intel Xeon shared with other jobs; it fits the training problems, seen greedy accuracy 0.93, but
answers only 0.04 of the held-out ones).

    python -m experiments.pretrain --config=experiments/distill/configs/teacher.py
    python -m experiments.sft --config=experiments/distill/configs/arithmetic_teacher.py
"""

import ml_collections

from experiments.sft.configs import arithmetic


def get_config() -> ml_collections.ConfigDict:
    c = arithmetic.get_config()
    c.name = "arithmetic_teacher"
    c.results_csv = "results/distill_sft_teacher.csv"
    c.base.workdir = "runs/pretrain/teacher/kl-uniform-seed0"
    c.loss.divergence = "kl"
    c.loss.q = "uniform"
    return c
