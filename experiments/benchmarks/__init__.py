"""Benchmarks of the f-divergence losses (scripts, not tests): ``python -m experiments.benchmarks``.

``losses``   forward+backward time and compiled peak memory of the losses against optax's softmax
             cross-entropy, per divergence and solver, on [N, V] logits;
``lm_head``  the fused LM head (:func:`fdiv.lm_head.fused_linear_fdiv_loss`) against the unfused
             ``hidden @ weight`` path: time, peak memory, and agreement of the results;
``roots``    error of the root ``τ`` against a 200-step float64 bisection, per iteration count,
             solver and divergence, on random and adversarial rows.

Each writes ``results/benchmarks/<name>.csv`` (one row per measurement, with the hardware, JAX
version, git commit and time of the run); ``notebooks/benchmarks.ipynb`` draws the figures.
"""
