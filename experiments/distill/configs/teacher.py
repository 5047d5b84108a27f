"""The distillation teacher: a pre-training config (run it with ``experiments.pretrain``).

Reproduces: the teacher of the paper's distillation setting, at laptop scale: the tiny KJV
Bible pre-training (``experiments/pretrain/configs/tiny.py``: corpus, 4k SentencePiece
vocabulary, 128-token sequences) with a deeper model, 4 layers of d_model 128 (1.3M parameters,
0.5M of them the tied embedding, against the student's 0.3M in ``tiny.py``), trained with the KL
loss (the cross-entropy, so its softmax is its own operator) for 500 steps of 16 sequences. It
lives here, not in experiments/pretrain/configs, because only distillation uses it; its result
rows go to results/distill_teacher.csv and results/distill_teacher_curves.csv.

Hardware: CPU. Time: 16 minutes of wall time on this 2-core Intel Xeon while other jobs shared
it (measured; validation loss 3.63, perplexity 38, about that of the 2-layer model after 600
steps: more steps would make it a stronger teacher).

    python -m experiments.pretrain --config=experiments/distill/configs/teacher.py
"""

import ml_collections

from experiments.pretrain.configs import tiny


def get_config() -> ml_collections.ConfigDict:
    c = tiny.get_config()
    c.name = "teacher"
    # Its rows stay out of the pre-training tables (and their notebook).
    c.results_csv = "results/distill_teacher.csv"
    c.curves_csv = "results/distill_teacher_curves.csv"
    c.model.num_layers = 4
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.mlp_dim = 512
    c.loss.divergence = "kl"
    c.loss.q = "uniform"
    c.optim.learning_rate = 3e-3
    c.train.steps = 500
    c.train.checkpoint_every_steps = 250
    c.train.eval_every_steps = 250
    return c
