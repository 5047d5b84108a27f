"""SFT: the reasoning-gym instruction data, prompt masking, and end-to-end runs from a tiny
pre-trained base (smoke, kill-and-resume, clear errors)."""

import ml_collections
import numpy as np
import pytest
import seqio

from experiments.common import instructions

SUMS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def _data_cfg(**changes) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        {
            "task": "chain_sum",
            "task_kwargs": dict(SUMS),
            "train_size": 300,
            "test_size": 40,
            "train_seed": 0,
            "test_seed": 1,
            "test_fraction": 0.25,
            "seq_len": 72,
        }
    )
    cfg.update(changes)
    return cfg


@pytest.fixture(scope="module")
def source() -> instructions.InstructionSource:
    return instructions.InstructionSource(_data_cfg(), seqio.ByteVocabulary())


def test_problems_are_reproducible_and_train_test_disjoint(source):
    again = instructions.InstructionSource(_data_cfg(), seqio.ByteVocabulary())
    assert again.train_problems == source.train_problems
    assert again.test_problems == source.test_problems
    train = {p.question for p in source.train_problems}
    test = [p.question for p in source.test_problems]
    assert len(source.train_problems) == 300 and len(test) == 40
    assert len(set(test)) == len(test)  # distinct test problems
    assert not train & set(test)
    # Another seed draws other training examples, from the same side of the split.
    other = instructions.split_problems(_data_cfg(train_seed=7))[0]
    assert other != source.train_problems
    assert not {p.question for p in other} & set(test)
    # Answers are the arithmetic of the question.
    for p in source.test_problems:
        expression = p.question.rsplit(":", 1)[1].rstrip("=")
        assert int(p.answer) == eval(expression)  # digits and +/- only


def test_batches_mask_the_prompt_and_padding(source):
    vocab = source.vocab
    batch = next(source.train_batches(8, seed=0, start_step=0))
    assert batch["inputs"].shape == batch["targets"].shape == batch["mask"].shape == (8, 72)
    assert batch["inputs"].dtype == np.int32 and batch["mask"].dtype == bool
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    for inputs, targets, mask in zip(batch["inputs"], batch["targets"], batch["mask"], strict=True):
        text = vocab.decode([t for t in inputs if t != 0])
        problem = next(p for p in source.train_problems if text.startswith(p.question))
        # The unmasked targets are exactly the answer followed by the eos.
        assert list(targets[mask]) == [*vocab.encode(problem.answer), vocab.eos_id]
        prompt_len = len(vocab.encode(problem.question))
        assert not mask[: prompt_len - 1].any() and mask[prompt_len - 1]
        assert not mask[prompt_len + len(vocab.encode(problem.answer)) :].any()
    # Batches are a function of (seed, step): a resumed run sees the same ones.
    batches = source.train_batches(8, seed=0, start_step=0)
    later = [next(batches) for _ in range(3)][2]
    np.testing.assert_array_equal(later["inputs"], next(source.train_batches(8, 0, 2))["inputs"])
    assert not np.array_equal(later["inputs"], batch["inputs"])


def test_validation_batches_cover_every_test_problem_once(source):
    batches = list(source.validation_batches(16))
    assert len(batches) == 3 and all(b["inputs"].shape == (16, 72) for b in batches)
    assert sum(int(b["mask"].any(axis=1).sum()) for b in batches) == 40
    assert not batches[-1]["mask"][8:].any()  # 40 = 16 + 16 + 8: padded rows are masked
    groups = list(source.prompt_groups(max_batch=16))
    indices = np.concatenate([i for i, _ in groups])
    assert sorted(indices.tolist()) == list(range(40))
    for i, prompts in groups:
        for j, row in zip(i, prompts, strict=True):
            assert source.vocab.decode(row.tolist()) == source.test_problems[j].question
    # The seen problems: distinct training problems, as many as test problems.
    seen = [p.question for p in source.seen_problems]
    assert len(seen) == len(set(seen)) == 40
    assert set(seen) <= {p.question for p in source.train_problems}
    groups = list(source.prompt_groups(max_batch=64, problems=source.seen_problems))
    assert sorted(np.concatenate([i for i, _ in groups]).tolist()) == list(range(40))


def test_answer_checking_is_exact_match(source):
    vocab = source.vocab
    eos = vocab.eos_id
    assert source.decode_answer([*vocab.encode("12"), eos, *vocab.encode("3")]) == "12"
    assert source.decode_answer(vocab.encode("-4")) == "-4"  # no eos: the whole buffer
    assert instructions.answer_matches(" 12 ", "12")
    assert not instructions.answer_matches("12", "1")
    assert not instructions.answer_matches("012", "12")
    assert not instructions.answer_matches("", "0")


def test_answer_decoding_fits_the_seen_answers_and_the_model_length(source):
    import copy

    import jax
    import jax.numpy as jnp

    from experiments.common import answers

    longest = 1 + max(len(source.vocab.encode(p.answer)) for p in source.test_problems)
    assert answers.max_new_tokens(source, 0) >= longest
    assert answers.max_new_tokens(source, 5) == 5
    # A seen (training) answer longer than every test answer: its tokens must fit too.
    longer = copy.copy(source)
    longer.seen_problems = [instructions.Problem("1 + 2 =", "1" * (longest + 3))]
    assert answers.max_new_tokens(longer, 0) == longest + 4

    problems = source.test_problems[:4]
    prompt_len = max(prompts.shape[1] for _, prompts in source.prompt_groups(2, problems))
    lengths = []

    def logits_fn(inputs):
        lengths.append(inputs.shape[1])
        return jnp.zeros((*inputs.shape, source.vocab.vocab_size))

    decoder = answers.Decoder(logits_fn, max_len=prompt_len + 1)
    kwargs = {"greedy": True, "rng": jax.random.key(0), "batch_size": 2, "max_new": 8}
    answers.accuracy(decoder, source, problems, **kwargs)
    assert lengths and max(lengths) == prompt_len + 1  # Cut at max_len, not prompt + 8.
    lengths.clear()
    answers.accuracy(answers.Decoder(logits_fn), source, problems, **kwargs)
    assert max(lengths) == prompt_len + 8


def test_bad_data_configs_are_clear_errors():
    with pytest.raises(ValueError, match="more than seq_len"):
        instructions.InstructionSource(_data_cfg(seq_len=20), seqio.ByteVocabulary())
    with pytest.raises(ValueError, match="test problems with test_fraction"):
        instructions.split_problems(_data_cfg(test_fraction=0.0))
    with pytest.raises(ValueError, match="reasoning-gym task 'no_such_task'"):
        instructions.split_problems(_data_cfg(task="no_such_task"))


def _tiny_model_cfg() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "num_layers": 1,
            "d_model": 16,
            "num_heads": 2,
            "mlp_dim": 32,
            "positions": "rotary",
            "max_len": 72,
            "tie_embeddings": True,
            "dtype": "float32",
        }
    )


@pytest.mark.parametrize(("divergence", "q"), [("alpha:1.5", "uniform"), ("kl", "base")])
def test_prompt_targets_change_neither_the_loss_nor_its_gradient(source, divergence, q):
    import jax
    from flax import nnx

    from experiments.common import transformer
    from experiments.sft import task

    vocab_size = source.vocab.vocab_size
    model = transformer.Transformer(_tiny_model_cfg(), vocab_size, rngs=nnx.Rngs(0))
    base = transformer.Transformer(_tiny_model_cfg(), vocab_size, rngs=nnx.Rngs(1))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    config = ml_collections.ConfigDict({"loss": {"divergence": divergence, "q": q}})
    frozen = base if q == "base" else None
    rest = task.initial_model_state(rest, frozen)
    loss_fn = task.make_loss_fn(graphdef, config, frozen and nnx.graphdef(frozen))

    def value_and_grad(batch):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, rest, batch, jax.random.key(0)
        )
        return float(loss), grads

    batch = next(source.train_batches(4, seed=0, start_step=0))
    scrambled = dict(batch)
    rng = np.random.default_rng(0)
    random_targets = rng.integers(0, vocab_size, batch["targets"].shape).astype(np.int32)
    scrambled["targets"] = np.where(batch["mask"], batch["targets"], random_targets)
    assert (scrambled["targets"] != batch["targets"]).sum() > 50  # many prompt targets changed
    loss, grads = value_and_grad(batch)
    loss_scrambled, grads_scrambled = value_and_grad(scrambled)
    assert loss == loss_scrambled
    jax.tree.map(np.testing.assert_array_equal, grads, grads_scrambled)
    # A changed response target does change them: the test can fail.
    answer = dict(batch)
    answer["targets"] = np.where(batch["mask"], (batch["targets"] + 1) % vocab_size, 0)
    assert value_and_grad(answer)[0] != loss


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory):
    from lmutil import save_pretrained

    return save_pretrained(tmp_path_factory.mktemp("base"))


@pytest.fixture
def sft_config(tmp_path, base_workdir) -> ml_collections.ConfigDict:
    """The default SFT config on a tiny byte-vocabulary base: 4 steps, 8 test problems."""
    from experiments.sft.configs import arithmetic

    c = arithmetic.get_config()
    c.base.workdir = str(base_workdir)
    c.workdir = str(tmp_path / "run")
    c.results_csv = str(tmp_path / "results.csv")
    c.data.train_size = 200
    c.data.test_size = 8
    c.data.seq_len = 72  # Byte vocabulary: 67 prompt tokens, up to 2 answer tokens, eos.
    c.train.batch_size = 8
    c.train.steps = 4
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = 2
    c.optim.warmup_steps = 1
    c.eval.batch_size = 8
    return c


DECODED = ("greedy", "sampled", "softmax_greedy", "softmax_sampled", "seen_greedy")
SFT_METRICS = [
    *(f"test_{d}_accuracy" for d in DECODED),
    *(f"test_{p}{m}" for p in ("", "softmax_") for m in ("loss", "accuracy", "eps_perplexity")),
    "test_support_size",
    "test_softmax_perplexity",
]


def test_sft_run_resumes_to_the_same_result_and_writes_one_row(sft_config, tmp_path):
    from experiments.common import results
    from experiments.sft import main

    sft_config.train.stop_after_steps = 2  # Killed after the first checkpoint.
    assert main.run(sft_config) is None
    sft_config.train.stop_after_steps = 0
    resumed = main.run(sft_config)
    rows = results.read_rows(sft_config.results_csv)
    assert len(rows) == 1 and rows[0]["run_name"] == "alpha1.5-uniform-seed0"
    assert rows[0]["experiment"] == "sft" and rows[0]["steps"] == "4"
    assert rows[0]["base_workdir"] == sft_config.base.workdir
    assert rows[0]["base_step"] == "1"
    for name in SFT_METRICS:
        value = float(rows[0][name])
        assert np.isfinite(value), name
        if "accuracy" in name:
            assert 0 <= value <= 1, name

    sft_config.workdir = str(tmp_path / "uninterrupted")
    sft_config.results_csv = str(tmp_path / "uninterrupted.csv")
    reference = main.run(sft_config)
    for name in SFT_METRICS:
        assert resumed[name] == reference[name], name


def test_sft_with_the_base_model_as_reference_measure(sft_config):
    from experiments.sft import main

    sft_config.loss.divergence, sft_config.loss.q = "chi2", "base"
    sft_config.train.steps = 2
    row = main.run(sft_config)
    assert row["reference_measure"] == "base" and row["run_name"] == "chi2-base-seed0"
    assert all(np.isfinite(row[name]) for name in SFT_METRICS)
    # Re-evaluated in batches of eval.batch_size (here 3 batches of the 8 test problems, the
    # last one short): the LM metrics combine to those of the whole split in one batch.
    sft_config.eval.batch_size = 3
    batched = main.run(sft_config)
    for name in SFT_METRICS:
        if "accuracy" not in name or name in ("test_accuracy", "test_softmax_accuracy"):
            np.testing.assert_allclose(batched[name], row[name], rtol=1e-5, err_msg=name)


def test_sft_can_start_from_an_sft_run(sft_config, tmp_path):
    """A second fine-tuning stage: its base is an SFT run, whose config records no model; the
    architecture and vocabulary are those of the pre-training run behind it."""
    from experiments.sft import main

    sft_config.train.steps = 2
    main.run(sft_config)
    sft_config.base.workdir = sft_config.workdir
    sft_config.workdir = str(tmp_path / "second_stage")
    row = main.run(sft_config)
    assert row["base_workdir"] == sft_config.base.workdir and row["base_step"] == 2
    assert all(np.isfinite(row[name]) for name in SFT_METRICS)


def test_sft_errors_are_clear(sft_config, tmp_path):
    from experiments.common import config as config_lib
    from experiments.common import lm
    from experiments.sft import main

    sft_config.base.workdir = str(tmp_path / "no_base")
    with pytest.raises(lm.ModelRestoreError, match="not the workdir of a pre-training run"):
        main.run(sft_config)
    sft_config.loss.q = "teacher"
    with pytest.raises(config_lib.ConfigError, match="expected one of uniform, unit, base"):
        main.run(sft_config)


def test_command_line_reports_a_missing_base_without_traceback(tmp_path):
    import subprocess
    import sys

    from exputil import REPO, subprocess_env

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sft",
            f"--config.base.workdir={tmp_path / 'no_base'}",
            f"--config.workdir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "error: " in proc.stderr and "not the workdir of a pre-training run" in proc.stderr
    assert "Traceback" not in proc.stderr
