"""Grade-school math word problems (reasoning-gym ``gsm_symbolic``) on the ~100M C4 model:
real-scale SFT for one accelerator node.

Reproduces: the paper's SFT setting at a scale where instruction following is meaningful: the
base is the ``c4_100m`` pre-training run with the KL loss (``experiments/pretrain/configs/
c4_100m.py``: 14 layers, d_model 768, 1024-token context, KJV SentencePiece vocabulary),
fine-tuned on 50k GSM-style problems generated offline by reasoning-gym (templated word
problems with a numeric answer; the answer is produced directly, without a worked solution), a
quarter of the distinct questions held out, 1000 test problems, sequences of 320 tokens (the
longest question + answer is about 270 tokens), AdamW at 3e-5, 3000 steps of 64 examples (4 epochs),
bfloat16 compute from the base. Without the base run it fails at once, naming the missing
workdir. The paper's instruction data and base models are not available; these are
assumptions, and the loss (``loss.divergence``, ``loss.q``) is what varies.

Hardware: one GPU or TPU host (data parallel over its devices). Time: not measured here
(generating the problems takes a few minutes of CPU at the start of every run; then minutes
of training, and the generation of 4 × 1000 answers without a key-value cache).

    python -m experiments.pretrain --config=experiments/pretrain/configs/c4_100m.py \\
        --config.loss.divergence=kl --config.loss.q=uniform \\
        --config.data.tfds_data_dir=/data/tensorflow_datasets
    python -m experiments.sft --config=experiments/sft/configs/gsm_symbolic.py \\
        --config.loss.divergence=alpha:1.5 --config.loss.q=base
"""

import ml_collections

from experiments.sft.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.name = "gsm_symbolic"
    c.base.workdir = "runs/pretrain/c4_100m/kl-uniform-seed0"
    c.data.task = "gsm_symbolic"
    c.data.task_kwargs = ml_collections.ConfigDict()
    c.data.train_size = 50_000
    c.data.test_size = 1000
    c.data.seq_len = 320
    c.loss.divergence = "alpha:1.5"
    c.loss.q = "uniform"
    c.optim.learning_rate = 3e-5
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.0
    c.train.batch_size = 64
    c.train.steps = 3000
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    c.train.eval_every_steps = 1000
    c.eval.batch_size = 250
    c.eval.max_new_tokens = 8
    return c
