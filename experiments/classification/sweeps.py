"""The classification sweep: 8 divergences × 2 reference measures × 3 seeds = 48 runs.

    python -m experiments.sweep classification --max-parallel 2

on the default ``fashion_mnist`` config (about 30 min on a 2-core CPU), into
results/classification.csv; notebooks/classification.ipynb draws it. Seeds are the outer loop, so
a partial sweep already covers every divergence.
"""

from experiments.common import entry
from experiments.sweep import Run, Sweep

DIVERGENCES = ("kl", "reverse_kl", "chi2", "hellinger", "js", "alpha:1.25", "alpha:1.5", "alpha:2")
REFERENCE_MEASURES = ("uniform", "unit")
SEEDS = (0, 1, 2)

SWEEP = Sweep(
    experiment="classification",
    config="experiments/classification/configs/fashion_mnist.py",
    runs=tuple(
        Run(entry.default_run_name(d, q, s), {"loss.divergence": d, "loss.q": q, "seed": s})
        for s in SEEDS
        for d in DIVERGENCES
        for q in REFERENCE_MEASURES
    ),
)
