"""The distillation sweep: 8 divergences × 3 reference measures × 2 seeds = 48 runs.

    python -m experiments.pretrain --config=experiments/distill/configs/teacher.py  # once
    python -m experiments.sweep distill --max-parallel 2

on the default ``tiny`` config (about 1 minute per run on a 2-core CPU, so roughly 25 min with
two at a time), into results/distill.csv; notebooks/distill.ipynb draws it. Every run distils
the same KL teacher. Seeds are the outer loop, so a partial sweep already covers every
divergence.
"""

from experiments.common import entry
from experiments.distill import task
from experiments.sweep import Run, Sweep

DIVERGENCES = ("kl", "reverse_kl", "chi2", "hellinger", "js", "alpha:1.25", "alpha:1.5", "alpha:2")
REFERENCE_MEASURES = task.REFERENCE_MEASURES  # uniform, unit, teacher
SEEDS = (0, 1)

SWEEP = Sweep(
    experiment="distill",
    config="experiments/distill/configs/tiny.py",
    runs=tuple(
        Run(entry.default_run_name(d, q, s), {"loss.divergence": d, "loss.q": q, "seed": s})
        for s in SEEDS
        for d in DIVERGENCES
        for q in REFERENCE_MEASURES
    ),
)
