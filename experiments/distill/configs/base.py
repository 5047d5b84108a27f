"""Every key of a distillation config, with its meaning; the configs beside it set values.

Not a runnable config by itself: ``tiny.py`` is the default, ``arithmetic.py`` the variant on
the SFT task. The data (corpus or instruction task, and vocabulary) are the teacher's: they are
read from the teacher's run (and its pre-training run), not set here.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = ""  # Config name, recorded in the results table (config_name).
    c.seed = 0  # Student initialisation and training batches.
    c.run_name = ""  # Empty: "<divergence>-<q>-seed<seed>", e.g. "alpha1.5-teacher-seed0".
    c.workdir = ""  # Checkpoints and metrics.jsonl; empty: runs/distill/<name>/<run_name>.
    c.results_csv = "results/distill.csv"  # One row per finished run.
    c.distributed = False  # True on multi-host TPU pods / SLURM: jax.distributed.initialize().

    c.teacher = ml_collections.ConfigDict()
    c.teacher.workdir = ""  # Workdir of the teacher's pre-training run (SFT run: "instructions").
    c.teacher.step = 0  # Its checkpoint; 0: the latest.

    c.student_init = ml_collections.ConfigDict()
    # A pre-training run whose model (of config.model's shape) the student starts from; "": random.
    c.student_init.workdir = ""
    c.student_init.step = 0  # Its checkpoint; 0: the latest.

    c.model = ml_collections.ConfigDict()  # The student (experiments.common.transformer).
    c.model.num_layers = 1
    c.model.d_model = 64
    c.model.num_heads = 2
    c.model.mlp_dim = 256
    c.model.positions = "rotary"  # rotary | learned
    c.model.max_len = 128
    c.model.tie_embeddings = True
    c.model.dtype = "float32"  # Compute dtype: float32 | bfloat16.

    c.data = ml_collections.ConfigDict()  # The teacher's data and vocabulary, with:
    # text: the teacher's pre-training corpus; instructions: the SFT task of the teacher's SFT
    # run (its problems and split; loss on the response tokens, the prompt masked).
    c.data.kind = "text"
    c.data.seq_len = 128  # Tokens per training sequence.
    c.data.cache_dir = ""  # Token cache (empty: the teacher's setting).

    c.distill = ml_collections.ConfigDict()
    c.distill.temperature = 1.0  # Targets softmax(teacher / T); the student's logits are / T too.
    c.distill.top_k = 0  # Keep the teacher's k most likely tokens, renormalised; 0: all.

    c.loss = ml_collections.ConfigDict()
    c.loss.divergence = "alpha:1.5"  # kl | reverse_kl | chi2 | hellinger | js | alpha:<value>
    # Reference measure: uniform | unit | teacher (the teacher's full softmax, per token).
    c.loss.q = "uniform"

    c.optim = ml_collections.ConfigDict()  # experiments.common.optim
    c.optim.name = "adamw"
    c.optim.learning_rate = 3e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.0
    c.optim.momentum = 0.9
    c.optim.grad_clip_norm = 1.0

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16  # Global batch (sequences), split over all devices.
    c.train.steps = 200
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 100
    c.train.keep_checkpoints = 2
    c.train.eval_every_steps = 0  # Held-out evaluation during training (0: only at the end).
    c.train.stop_after_steps = 0  # Stop early (keeping the checkpoint) to test resumption; 0: off.

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 32  # Validation sequences per batch.
    c.eval.max_batches = 8  # Validation batches evaluated (0: the whole validation split).
    # Instructions: tokens generated per answer; 0: the longest test answer + eos.
    c.eval.max_new_tokens = 0
    return c
