"""ImageNet (ILSVRC-2012), ResNet-50: real-scale classification config for 8+ accelerators.

Reproduces: the classification experiment at ImageNet scale with the standard ResNet-50 recipe
(ResNet-50 v1.5, SGD with Nesterov momentum 0.9, batch 1024, peak learning rate 0.4 with 5
warm-up epochs and cosine decay, weight decay 1e-4 on kernels, Inception crop + flip at 224,
bfloat16 compute, 90 epochs). The paper does not publish its ImageNet settings; this recipe is an
assumption, and the loss (``loss.divergence``, ``loss.q``; ``prior`` is not available for a
streamed dataset) is what varies.

Data: tfds ``imagenet2012`` (the ILSVRC2012 tars placed in <data_dir>/downloads/manual and
prepared beforehand; the run fails fast otherwise). Hardware: 8 GPUs or a TPU v3-8/v4-8 or larger
(data parallel; set ``--config.distributed=True`` on multi-host slices). Time: not measured here;
about 7 hours on 8 A100-class GPUs is the usual order for 90 epochs.

On a TPU VM slice, every host runs the same command; the data and the workdir must be on a
filesystem that every host mounts (e.g. Filestore/NFS; paths are local paths, not gs://)::

    gcloud compute tpus tpu-vm ssh $TPU --worker=all --command="cd fdiv && \\
      python -m experiments.classification \\
        --config=experiments/classification/configs/imagenet_resnet50.py \\
        --config.distributed=True --config.data.tfds_data_dir=/mnt/shared/tensorflow_datasets \\
        --config.workdir=/mnt/shared/runs/imagenet_resnet50/alpha1.5-uniform-seed0"
"""

import ml_collections

from experiments.classification.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.name = "imagenet_resnet50"
    c.data.name = "imagenet2012"
    c.data.image_size = 224
    c.model.name = "resnet50"
    c.model.stem = "imagenet"
    c.model.dtype = "bfloat16"
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.4
    c.optim.warmup_steps = 6_255  # 5 epochs of 1.28M at batch 1024.
    c.optim.weight_decay = 1e-4
    c.train.batch_size = 1024
    c.train.steps = 112_600  # 90 epochs.
    c.train.log_every_steps = 200
    c.train.checkpoint_every_steps = 2000
    c.train.eval_every_steps = 10_000
    c.eval.batch_size = 1024  # Divisible by any power-of-two device count.
    return c
