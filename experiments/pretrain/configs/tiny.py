"""King James Bible, a 2-layer Transformer: the default pre-training config (a CPU, minutes).

Reproduces: the paper's language-model pre-training experiment (an f-divergence loss through the
fused LM head in place of the cross-entropy) at a size that runs anywhere: the KJV text (Debian
packages bible-kjv-text + bible-kjv; 95% of the chapters for training, 5% held out), the
committed 4k SentencePiece vocabulary, a 2-layer pre-norm Transformer (d_model 128, 4 heads,
rotary positions, tied embeddings; 0.9M parameters), sequences of 128 tokens, AdamW with a
cosine schedule, 240 steps of 16 sequences (490k tokens, half an epoch). Validation on the
first 16k of the 57k held-out tokens at steps 0, 80, 160 and 240. The paper's own model
sizes and settings are not published; the loss (divergence and reference measure q) is what
varies.

Hardware: CPU. Time: about 2 minutes of one core (measured on a 2-core Intel Xeon with one XLA
thread: 1m42s user + 15s system; 3m15s wall while the machine was shared with other jobs), i.e.
about 35–40 min for the 32-run sweep in ``experiments/pretrain/sweeps.py`` with
``--max-parallel 2``. Learning, measured (alpha:1.5, uniform q, seed 0): validation loss 84.5 at
step 0 → 67.0 at step 240, next-token accuracy 0.25.

    python -m experiments.pretrain --config=experiments/pretrain/configs/tiny.py \\
        --config.loss.divergence=alpha:1.5 --config.loss.q=unit
"""

import ml_collections

from experiments.pretrain.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.name = "tiny"
    c.data.name = "kjv_bible"
    c.data.vocab = "sentencepiece"
    c.data.seq_len = 128
    c.model.num_layers = 2
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.mlp_dim = 512
    c.model.max_len = 128
    c.loss.divergence = "alpha:1.5"
    c.loss.q = "uniform"
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.01
    c.train.batch_size = 16
    c.train.steps = 240
    c.train.log_every_steps = 20
    c.train.checkpoint_every_steps = 80
    c.train.eval_every_steps = 80
    c.eval.batch_size = 64
    c.eval.max_batches = 2  # The first 16k of the 57k validation tokens.
    c.sample.prompt = "And God said"
    c.sample.max_new_tokens = 24
    return c
