"""Distillation on the SFT task: a fine-tuned 4-layer teacher into a pre-trained 2-layer student.

Reproduces: the paper's distillation setting with task accuracy, at laptop scale. Teacher:
``arithmetic_teacher.py`` (the 4-layer KL teacher of ``teacher.py`` fine-tuned with KL on the
single-digit sums and differences of ``experiments/sft/configs/arithmetic.py``). Data: that SFT
run's instruction examples (same problems, same train/test split), the loss on the response
tokens only (the prompt masked, as in SFT), the targets the teacher's full softmax at
temperature 1. Student: the 2-layer, d_model 128 model of ``experiments/pretrain/configs/tiny.py``
pre-trained with KL (the base of the SFT experiment: half the teacher's layers), not random
weights: a randomly initialised student would have to learn the language of the prompts from
a few thousand answer tokens. 200 steps of 32 examples. Metrics on the held-out problems:
top-1 agreement with the teacher on the response tokens, the distillation loss, the LM metrics
against the reference answers, and the exact-match accuracy of the student's greedy answers with
its operator and with softmax (``test_greedy_accuracy``, ``test_softmax_greedy_accuracy``;
``test_seen_*`` on as many training problems), beside the teacher's own
(``test_teacher_greedy_accuracy``). Rows go to results/distill.csv with config_name
"arithmetic". The paper's models are not available; the loss (divergence and q: uniform, unit or
the teacher itself) is what varies.

Hardware: CPU. Time: about 1 minute of CPU (measured for alpha:1.5, uniform q: 79 s user,
156 s wall on a 2-core Intel Xeon shared with other jobs; held-out greedy accuracy 0.19 against
the teacher's 0.04, agreement 0.73), after the three runs it starts from (the teacher's
pre-training 16 min, its SFT 89 s user, the student's pre-training about 2 min):

    python -m experiments.pretrain --config=experiments/distill/configs/teacher.py
    python -m experiments.sft --config=experiments/distill/configs/arithmetic_teacher.py
    python -m experiments.pretrain --config=experiments/pretrain/configs/tiny.py \\
        --config.loss.divergence=kl --config.loss.q=uniform
    python -m experiments.distill --config=experiments/distill/configs/arithmetic.py
"""

import ml_collections

from experiments.distill.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.name = "arithmetic"
    c.teacher.workdir = "runs/sft/arithmetic_teacher/kl-uniform-seed0"
    c.student_init.workdir = "runs/pretrain/tiny/kl-uniform-seed0"
    # The shape of experiments/pretrain/configs/tiny.py (checked against the student_init run).
    c.model.num_layers = 2
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.mlp_dim = 512
    c.model.max_len = 128
    c.data.kind = "instructions"
    c.data.seq_len = 40  # As experiments/sft/configs/arithmetic.py: prompt + answer + eos.
    c.loss.divergence = "alpha:1.5"
    c.loss.q = "uniform"
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 20
    c.train.batch_size = 32
    c.train.steps = 200
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 100
    c.eval.batch_size = 256
    c.eval.max_batches = 0  # Every test problem.
    return c
