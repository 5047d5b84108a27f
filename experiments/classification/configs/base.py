"""Every key of a classification config, with its meaning; the configs beside it set values.

Not a runnable config by itself: ``fashion_mnist.py`` is the default.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = ""  # Config name, recorded in the results table (config_name).
    c.seed = 0  # Model initialisation, data order and augmentation.
    c.run_name = ""  # Empty: "<divergence>-<q>-seed<seed>", e.g. "alpha1.5-uniform-seed0".
    c.workdir = ""  # Checkpoints and metrics.jsonl; empty: runs/classification/<name>/<run_name>.
    c.results_csv = "results/classification.csv"  # One row per finished run.
    c.distributed = False  # True on multi-host TPU pods / SLURM: jax.distributed.initialize().

    c.data = ml_collections.ConfigDict()
    c.data.name = ""  # fashion_mnist | cifar10 | cifar100 | imagenet2012
    c.data.idx_dir = "/usr/share/datasets/fashion-mnist"  # Fashion-MNIST idx files (Debian).
    c.data.tfds_data_dir = ""  # Empty: $TFDS_DATA_DIR or ~/tensorflow_datasets.
    c.data.train_size = 0  # Use only the first N training examples (0: all); for smoke tests.
    c.data.test_size = 0  # Likewise for the test split.
    c.data.augment = "none"  # none | crop_flip (pad 4, random crop, horizontal flip).
    c.data.image_size = 224  # Streamed datasets (ImageNet) only: the crop size.

    c.model = ml_collections.ConfigDict()
    c.model.name = ""  # cnn | resnet18 | resnet50
    c.model.dtype = "float32"  # Compute dtype: float32 | bfloat16 (parameters stay float32).
    c.model.channels = (16, 32)  # cnn: conv widths (each conv is followed by a 2×2 max-pool).
    c.model.hidden = 128  # cnn: width of the MLP head.
    c.model.width = 64  # resnet: width of the first stage.
    c.model.stem = "imagenet"  # resnet: imagenet (7×7/2 conv + max-pool) | cifar (3×3/1 conv).

    c.loss = ml_collections.ConfigDict()
    c.loss.divergence = "alpha:1.5"  # kl | reverse_kl | chi2 | hellinger | js | alpha:<value>
    c.loss.q = "uniform"  # Reference measure: uniform | unit | prior | learned.

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # adamw | sgd (Nesterov momentum)
    c.optim.learning_rate = 1e-3  # Peak learning rate.
    c.optim.schedule = "cosine"  # cosine (to 0) | constant, after a linear warm-up.
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0  # Decoupled, on kernels only.
    c.optim.momentum = 0.9  # sgd only.
    c.optim.grad_clip_norm = 0.0  # Clip the global gradient norm; 0: off.

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128  # Global batch, split over all devices.
    c.train.steps = 1000
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 500
    c.train.keep_checkpoints = 2
    c.train.eval_every_steps = 0  # Test-split evaluation during training (0: only at the end).
    c.train.stop_after_steps = 0  # Stop early (keeping the checkpoint) to test resumption; 0: off.

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 1000  # Global; the last batch is padded and masked.
    c.eval.ece_bins = 15  # Equal-width confidence bins of the expected calibration error.
    return c
