"""C4, a ~1B-parameter Transformer: real-scale pre-training for a TPU pod slice or several GPU
nodes.

Reproduces: the pre-training comparison at the largest scale here: C4 (``c4/en``, tfds, prepared
beforehand; the run fails fast with instructions otherwise), sequences of 2048 tokens, a
pre-norm Transformer of 20 layers, d_model 2048, 16 heads, GELU MLP 8192, rotary positions, tied
embeddings (~1.0B parameters with the committed 4k SentencePiece vocabulary), bfloat16 compute,
parameters and optimiser state sharded over the data axis (FSDP), AdamW (peak 3e-4, 2000
warm-up steps, cosine decay, weight decay 0.1, clipping at 1), 20k steps of 512 × 2048 tokens
(21B tokens, about 20 per parameter). The vocabulary is the repo's KJV-trained SentencePiece
model (a C4-trained 32k vocabulary is not available offline). The paper's own settings are not
published; these are assumptions, and the loss (``loss.divergence``, ``loss.q``) is what
varies. Validation: the first 20 batches of 512 sequences of the C4 validation split (21M
tokens), every 2000 steps and at the end.

Hardware: a TPU v4-64 / v5p-64 slice or 4+ nodes of 8 GPUs (the global batch of 512 must divide
by the device count). Time: not measured here; about 1.3e20 FLOPs (6 · parameters · tokens),
on the order of 10 hours on 64 accelerator chips.

On a TPU VM slice every host runs the same command, with the data and the workdir on a
filesystem that every host mounts (``jax.distributed.initialize()`` through
``--config.distributed=True``)::

    gcloud compute tpus tpu-vm ssh $TPU --worker=all --command="cd fdiv && \\
      python -m experiments.pretrain --config=experiments/pretrain/configs/c4_1b.py \\
        --config.distributed=True --config.data.tfds_data_dir=/mnt/shared/tensorflow_datasets \\
        --config.workdir=/mnt/shared/runs/pretrain/c4_1b/alpha1.5-unit-seed0 \\
        --config.loss.divergence=alpha:1.5 --config.loss.q=unit"

On SLURM GPU nodes, one task per node (``srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8``)
running the same ``python -m experiments.pretrain ... --config.distributed=True`` line.
"""

import ml_collections

from experiments.pretrain.configs import c4_100m


def get_config() -> ml_collections.ConfigDict:
    c = c4_100m.get_config()
    c.name = "c4_1b"
    c.data.seq_len = 2048
    c.model.num_layers = 20
    c.model.d_model = 2048
    c.model.num_heads = 16
    c.model.mlp_dim = 8192
    c.model.max_len = 2048
    c.sharding.fsdp = True
    c.optim.learning_rate = 3e-4
    c.optim.warmup_steps = 2000
    c.train.batch_size = 512
    c.train.steps = 20_000
    c.train.checkpoint_every_steps = 1000
    c.train.eval_every_steps = 2000
    c.eval.batch_size = 512
    c.eval.max_batches = 20
    return c
