"""Every key of a pre-training config, with its meaning; the configs beside it set values.

Not a runnable config by itself: ``tiny.py`` is the default.
"""

import ml_collections

from experiments.common import text


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = ""  # Config name, recorded in the results tables (config_name).
    c.seed = 0  # Model initialisation and data order.
    c.run_name = ""  # Empty: "<divergence>-<q>-seed<seed>", e.g. "alpha1.5-uniform-seed0".
    c.workdir = ""  # Checkpoints and metrics.jsonl; empty: runs/pretrain/<name>/<run_name>.
    c.results_csv = "results/pretrain.csv"  # One row per finished run (final metrics).
    c.curves_csv = "results/pretrain_curves.csv"  # One row per validation of each run.
    c.distributed = False  # True on multi-host TPU pods / SLURM: jax.distributed.initialize().

    # Text data (experiments.common.text): name kjv_bible | python_docs | c4, vocab
    # sentencepiece | byte, seq_len (tokens per training sequence), validation_fraction, ...
    c.data = text.data_config()

    c.model = ml_collections.ConfigDict()  # experiments.common.transformer.Transformer
    c.model.num_layers = 2
    c.model.d_model = 128
    c.model.num_heads = 4  # Divides d_model.
    c.model.mlp_dim = 512
    c.model.mlp = "gelu"  # gelu | swiglu
    c.model.positions = "rotary"  # rotary | learned
    c.model.max_len = 128  # Longest input (≥ data.seq_len; the sample's prompt + new tokens).
    c.model.tie_embeddings = True  # The output projection is the input embedding, transposed.
    c.model.dtype = "float32"  # Compute dtype: float32 | bfloat16 (parameters stay float32).

    c.loss = ml_collections.ConfigDict()
    c.loss.divergence = "alpha:1.5"  # kl | reverse_kl | chi2 | hellinger | js | alpha:<value>
    c.loss.q = "uniform"  # Reference measure: uniform | unit | unigram (training-split tokens).
    c.loss.chunk_size = 512  # Tokens per chunk of the fused LM head (memory vs. speed).

    c.optim = ml_collections.ConfigDict()  # experiments.common.optim
    c.optim.name = "adamw"  # adamw | sgd (Nesterov momentum)
    c.optim.learning_rate = 1e-3  # Peak learning rate.
    c.optim.schedule = "cosine"  # cosine (to 0) | constant, after a linear warm-up.
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0  # Decoupled, on matrices only.
    c.optim.momentum = 0.9  # sgd only.
    c.optim.grad_clip_norm = 1.0  # Clip the global gradient norm; 0: off.

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # Sequences per step (global, split over all devices).
    c.train.steps = 1000
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 500
    c.train.keep_checkpoints = 2
    c.train.eval_every_steps = 0  # Validation during training (0: only at the end).
    c.train.stop_after_steps = 0  # Stop early (keeping the checkpoint) to test resumption; 0: off.

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 64  # Global; the last batch is padded and masked.
    c.eval.max_batches = 0  # Validate on the first N batches of the split only (0: all of it).

    c.sample = ml_collections.ConfigDict()  # A greedy sample printed in the log after training.
    c.sample.prompt = "In the beginning"
    c.sample.max_new_tokens = 32  # 0: no sample.

    c.sharding = ml_collections.ConfigDict()
    c.sharding.fsdp = False  # Split large parameters and optimiser state over the data axis.
    c.sharding.fsdp_min_size = 2**18  # Only arrays of at least this many elements are split.
    return c
