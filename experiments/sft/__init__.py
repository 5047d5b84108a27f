"""Supervised fine-tuning of a pre-trained language model with f-divergence losses
(``python -m experiments.sft``)."""
