"""Language-model pre-training with f-divergence losses (``python -m experiments.pretrain``)."""
