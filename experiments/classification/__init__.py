"""Image classification with f-divergence losses (``python -m experiments.classification``)."""
