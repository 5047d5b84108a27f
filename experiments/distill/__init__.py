"""Distillation of a pre-trained teacher language model into a smaller student with
f-divergence losses (``python -m experiments.distill``)."""
