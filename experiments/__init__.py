"""Experiments of the paper, one package each, and the machinery they share (``common``)."""
