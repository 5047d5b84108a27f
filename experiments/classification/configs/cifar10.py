"""CIFAR-10, ResNet-18 (CIFAR stem): real-scale classification config for one accelerator.

Reproduces: the classification experiment at CIFAR scale with a standard recipe (ResNet-18 with a
3×3 stem, SGD with Nesterov momentum 0.9, batch 512, peak learning rate 0.4 with 5 warm-up epochs
and cosine decay, weight decay 5e-4, random crop + flip, bfloat16 compute, 200 epochs). The paper
does not publish its CIFAR settings; this recipe is an assumption, and the loss
(``loss.divergence``, ``loss.q``) is what varies.

Data: tfds ``cifar10`` (prepared beforehand where a network is reachable; the run fails fast
otherwise). Hardware: one GPU or TPU chip; several devices split the batch (data parallel).
Time: not measured here (no accelerator was available); about 1 hour on one A100-class GPU is the
usual order for 200 epochs of ResNet-18 on CIFAR.
"""

import ml_collections

from experiments.classification.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.name = "cifar10"
    c.data.name = "cifar10"
    c.data.augment = "crop_flip"
    c.model.name = "resnet18"
    c.model.stem = "cifar"
    c.model.dtype = "bfloat16"
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.4
    c.optim.warmup_steps = 490  # 5 epochs of 50k at batch 512.
    c.optim.weight_decay = 5e-4
    c.train.batch_size = 512
    c.train.steps = 19_532  # 200 epochs.
    c.train.checkpoint_every_steps = 1000
    c.train.eval_every_steps = 1000
    c.eval.batch_size = 1024  # Divisible by any power-of-two device count.
    return c
