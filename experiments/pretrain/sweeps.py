"""The pre-training sweep: 8 divergences × 2 reference measures × 2 seeds = 32 runs.

    python -m experiments.sweep pretrain --max-parallel 2

on the default ``tiny`` config (about 2 CPU-minutes per run, so about 35–40 min on a 2-core
CPU), into results/pretrain.csv (final metrics) and results/pretrain_curves.csv (validation
curves). Seeds are the outer loop, so a partial sweep already covers every divergence.
"""

from experiments.common import entry
from experiments.sweep import Run, Sweep

DIVERGENCES = ("kl", "reverse_kl", "chi2", "js", "hellinger", "alpha:1.25", "alpha:1.5", "alpha:2")
REFERENCE_MEASURES = ("uniform", "unit")
SEEDS = (0, 1)

SWEEP = Sweep(
    experiment="pretrain",
    config="experiments/pretrain/configs/tiny.py",
    runs=tuple(
        Run(entry.default_run_name(d, q, s), {"loss.divergence": d, "loss.q": q, "seed": s})
        for s in SEEDS
        for d in DIVERGENCES
        for q in REFERENCE_MEASURES
    ),
)
