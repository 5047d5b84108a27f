"""Every key of an SFT config, with its meaning; the configs beside it set values.

Not a runnable config by itself: ``arithmetic.py`` is the default. The model (architecture and
vocabulary) is the base model's: it is read from the base pre-training run, not set here.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = ""  # Config name, recorded in the results table (config_name).
    c.seed = 0  # Training batches and answer sampling.
    c.run_name = ""  # Empty: "<divergence>-<q>-seed<seed>", e.g. "alpha1.5-base-seed0".
    c.workdir = ""  # Checkpoints and metrics.jsonl; empty: runs/sft/<name>/<run_name>.
    c.results_csv = "results/sft.csv"  # One row per finished run.
    c.distributed = False  # True on multi-host TPU pods / SLURM: jax.distributed.initialize().

    c.base = ml_collections.ConfigDict()
    c.base.workdir = ""  # Workdir of the pre-training run (python -m experiments.pretrain).
    c.base.step = 0  # Its checkpoint to start from; 0: the latest.

    c.data = ml_collections.ConfigDict()  # experiments.common.instructions.InstructionSource
    c.data.task = "chain_sum"  # A reasoning-gym dataset name.
    c.data.task_kwargs = ml_collections.ConfigDict()  # Its config (e.g. min_digits).
    c.data.train_size = 2000  # Training examples (draws; a problem may repeat).
    c.data.test_size = 200  # At most this many distinct test problems.
    c.data.train_seed = 0
    c.data.test_seed = 1
    c.data.test_fraction = 0.25  # Share of the distinct questions held out for the test split.
    c.data.seq_len = 48  # Tokens per example (prompt + answer + eos, minus one); padded.

    c.loss = ml_collections.ConfigDict()
    c.loss.divergence = "alpha:1.5"  # kl | reverse_kl | chi2 | hellinger | js | alpha:<value>
    # Reference measure: uniform | unit | base (softmax of the frozen base model, per token).
    c.loss.q = "uniform"

    c.optim = ml_collections.ConfigDict()  # experiments.common.optim
    c.optim.name = "adamw"
    c.optim.learning_rate = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.momentum = 0.9
    c.optim.grad_clip_norm = 1.0

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # Global batch (examples), split over all devices.
    c.train.steps = 200
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 100
    c.train.keep_checkpoints = 2
    c.train.eval_every_steps = 0  # Test evaluation during training (0: only at the end).
    c.train.stop_after_steps = 0  # Stop early (keeping the checkpoint) to test resumption; 0: off.

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 256  # Test problems per LM-metrics batch and per generation batch.
    c.eval.max_new_tokens = 0  # Generated tokens per answer; 0: the longest test answer + eos.
    c.eval.sample_seed = 0  # Randomness of the sampled answers (one sample per problem).
    return c
