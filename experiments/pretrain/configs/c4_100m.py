"""C4, a ~100M-parameter Transformer: real-scale pre-training for one 8-GPU node (or a TPU slice).

Reproduces: the paper's pre-training comparison of f-divergence losses at a scale where language
modelling is meaningful: C4 (``c4/en``, tfds, prepared beforehand; the run fails fast with
instructions otherwise), sequences of 1024 tokens, a GPT-2-small-shaped pre-norm Transformer
(14 layers, d_model 768, 12 heads, GELU MLP 3072, rotary positions, tied embeddings; ~100M
parameters with the committed 4k SentencePiece vocabulary), bfloat16 compute, AdamW (peak 6e-4,
1000 warm-up steps, cosine decay, weight decay 0.1, clipping at 1), 10k steps of 256 × 1024
tokens (2.6B tokens). The vocabulary is the repo's KJV-trained SentencePiece model
(``data.vocab``; ``byte`` is the other choice): a C4-trained 32k vocabulary is not available
offline. The paper's own settings are not published; these are assumptions, and the loss
(``loss.divergence``, ``loss.q``) is what varies. Validation: the first 40 batches of 256
sequences of the C4 validation split (10M tokens), every 1000 steps and at the end.

Hardware: 8 GPUs (data parallel; ``--config.sharding.fsdp=True`` splits the large parameters
and optimiser state over them) or a TPU v4-8 or larger. Time: not measured here; about 1.6e18
FLOPs (6 · parameters · tokens), on the order of an hour on 8 H100-class GPUs.

One node (all its GPUs form the mesh)::

    python -m experiments.pretrain --config=experiments/pretrain/configs/c4_100m.py \\
        --config.data.tfds_data_dir=/data/tensorflow_datasets \\
        --config.loss.divergence=alpha:1.5 --config.loss.q=unit

Several hosts (TPU VM slice, or one SLURM task per host): every host runs the same command with
``--config.distributed=True`` (``jax.distributed.initialize()`` finds the coordinator), the data
and the workdir on a filesystem that every host mounts::

    gcloud compute tpus tpu-vm ssh $TPU --worker=all --command="cd fdiv && \\
      python -m experiments.pretrain --config=experiments/pretrain/configs/c4_100m.py \\
        --config.distributed=True --config.data.tfds_data_dir=/mnt/shared/tensorflow_datasets \\
        --config.workdir=/mnt/shared/runs/pretrain/c4_100m/alpha1.5-unit-seed0"
"""

import ml_collections

from experiments.pretrain.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.name = "c4_100m"
    c.data.name = "c4"
    c.data.vocab = "sentencepiece"
    c.data.seq_len = 1024
    c.model.num_layers = 14
    c.model.d_model = 768
    c.model.num_heads = 12
    c.model.mlp_dim = 3072
    c.model.max_len = 1024
    c.model.dtype = "bfloat16"
    c.loss.divergence = "alpha:1.5"
    c.loss.q = "uniform"
    c.loss.chunk_size = 1024
    c.optim.learning_rate = 6e-4
    c.optim.warmup_steps = 1000
    c.optim.weight_decay = 0.1
    c.optim.grad_clip_norm = 1.0
    c.train.batch_size = 256
    c.train.steps = 10_000
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    c.train.eval_every_steps = 1000
    c.eval.batch_size = 256
    c.eval.max_batches = 40
    c.sample.prompt = "The meaning of life is"
    c.sample.max_new_tokens = 48
    return c
