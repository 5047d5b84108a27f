"""The SFT sweep: 8 divergences × 3 reference measures × 3 seeds = 72 runs.

    python -m experiments.pretrain --config=experiments/pretrain/configs/tiny.py \\
        --config.loss.divergence=kl --config.loss.q=uniform   # the base model, once
    python -m experiments.sweep sft --max-parallel 2

on the default ``arithmetic`` config (about 1 minute per run on a 2-core CPU, so roughly 40 min
with two at a time), into results/sft.csv; notebooks/sft.ipynb draws it. Every run fine-tunes
the same KL base model. Seeds are the outer loop, so a partial sweep already covers every
divergence.
"""

from experiments.common import entry
from experiments.sft import task
from experiments.sweep import Run, Sweep

DIVERGENCES = ("kl", "reverse_kl", "chi2", "hellinger", "js", "alpha:1.25", "alpha:1.5", "alpha:2")
REFERENCE_MEASURES = task.REFERENCE_MEASURES  # uniform, unit, base
SEEDS = (0, 1, 2)

SWEEP = Sweep(
    experiment="sft",
    config="experiments/sft/configs/arithmetic.py",
    runs=tuple(
        Run(entry.default_run_name(d, q, s), {"loss.divergence": d, "loss.q": q, "seed": s})
        for s in SEEDS
        for d in DIVERGENCES
        for q in REFERENCE_MEASURES
    ),
)
