"""The ~1B C4 model distilled into the ~100M one: real-scale distillation for accelerators.

Reproduces: the paper's distillation setting at a meaningful scale: the teacher is the
``c4_1b`` pre-training run with the KL loss (``experiments/pretrain/configs/c4_1b.py``), the
student has the shape of ``c4_100m`` (14 layers, d_model 768, 12 heads) from random weights,
trained on the teacher's C4 text (sequences of 1024 tokens) against the teacher's 64 most likely
tokens per position renormalised (``distill.top_k``: the fused head takes them as (indices,
values) pairs, so no ``[tokens, vocabulary]`` target array exists; a 32k or larger vocabulary
costs the same), temperature 1, AdamW at 6e-4, 10k steps of 256 × 1024 tokens, bfloat16.
Evaluation on the first 40 validation batches of 64 sequences. The train state holds the
teacher (frozen) beside the student, so checkpoints are about the teacher's size larger.
Without the teacher's run it fails at once, naming the missing workdir; without C4 prepared for
tfds, with the instructions to prepare it. The paper's models and settings are not available;
these are assumptions, and the loss (``loss.divergence``, ``loss.q``) is what varies.

Hardware: 8 GPUs or a TPU v4-8 or larger (data parallel; the teacher's forward pass at every
step costs about twice the student's training step). Time: not measured here.

    python -m experiments.pretrain --config=experiments/pretrain/configs/c4_1b.py \\
        --config.loss.divergence=kl --config.loss.q=uniform \\
        --config.data.tfds_data_dir=/data/tensorflow_datasets
    python -m experiments.distill --config=experiments/distill/configs/c4.py \\
        --config.loss.divergence=alpha:1.5 --config.loss.q=uniform
"""

import ml_collections

from experiments.distill.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.name = "c4"
    c.teacher.workdir = "runs/pretrain/c4_1b/kl-uniform-seed0"
    c.model.num_layers = 14
    c.model.d_model = 768
    c.model.num_heads = 12
    c.model.mlp_dim = 3072
    c.model.max_len = 1024
    c.model.dtype = "bfloat16"
    c.data.seq_len = 1024
    c.distill.top_k = 64
    c.distill.temperature = 1.0
    c.loss.divergence = "alpha:1.5"
    c.loss.q = "uniform"
    c.optim.learning_rate = 6e-4
    c.optim.warmup_steps = 1000
    c.optim.weight_decay = 0.1
    c.train.batch_size = 256
    c.train.steps = 10_000
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    c.train.eval_every_steps = 2000
    c.eval.batch_size = 64
    c.eval.max_batches = 40
    return c
