"""KJV Bible, a 4-layer teacher into a 1-layer student: the default distillation config.

Reproduces: the paper's distillation setting (a student trained on a larger teacher's
per-token distributions with the soft-label f-divergence loss, ``D_f(y, q)`` included) at laptop
scale. Teacher: ``teacher.py`` (4 layers, d_model 128, pre-trained with KL on the KJV Bible).
Student: 1 layer, d_model 64, 2 heads (0.3M parameters, most of them the tied 4k embedding),
from random weights, 300 steps of 16 sequences of 64 tokens of the teacher's training text,
targets the teacher's full softmax at temperature 1 (``distill.top_k`` > 0 keeps its top k,
renormalised, as for large vocabularies). Metrics on 8 held-out batches: top-1 agreement with the
teacher, the distillation loss, and the LM metrics against the text. The paper's models are not
available; the loss (divergence and q: uniform, unit or the teacher itself) is what varies.

Hardware: CPU. Time: about 1 minute of CPU (measured for alpha:1.5, uniform q: 62 s user, 100 s
wall on a 2-core Intel Xeon shared with other jobs), after the teacher's pre-training.

    python -m experiments.pretrain --config=experiments/distill/configs/teacher.py
    python -m experiments.distill --config=experiments/distill/configs/tiny.py
"""

import ml_collections

from experiments.distill.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.name = "tiny"
    c.teacher.workdir = "runs/pretrain/teacher/kl-uniform-seed0"
    c.model.num_layers = 1
    c.model.d_model = 64
    c.model.num_heads = 2
    c.model.mlp_dim = 256
    c.model.max_len = 64
    c.data.seq_len = 64
    c.loss.divergence = "alpha:1.5"
    c.loss.q = "uniform"
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 20
    c.train.batch_size = 16
    c.train.steps = 300
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 150
    c.eval.batch_size = 32
    c.eval.max_batches = 8
    return c
