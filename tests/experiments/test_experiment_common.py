"""Unit tests of the shared experiment machinery (experiments/common)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from exputil import subprocess_env
from flax import nnx

from experiments.common import (
    checkpoint,
    config,
    data,
    metrics,
    models,
    preprocess,
    progress,
    results,
    sharding,
    trainer,
)


def _row(run_name: str, **metrics_) -> dict:
    row = {k: "x" for k in (*results.LEADING, *results.TRAILING)}
    return {**row, "run_name": run_name, **metrics_}


def test_results_rows_replace_their_run_and_union_columns(tmp_path):
    path = tmp_path / "r.csv"
    results.write_row(path, _row("a", acc=0.5))
    results.write_row(path, _row("b", loss=1.25))
    results.write_row(path, _row("a", acc=0.75))
    rows = results.read_rows(path)
    assert [(r["run_name"], r["acc"], r["loss"]) for r in rows] == [
        ("b", "", "1.25"),
        ("a", "0.75", ""),
    ]
    assert list(rows[0]) == [*results.LEADING, "acc", "loss", *results.TRAILING]
    assert results.done_runs(path) == {("x", "x", "a"), ("x", "x", "b")}
    with pytest.raises(ValueError, match="lacks columns"):
        results.write_row(path, {"run_name": "c"})


_WRITER = """
import sys
from experiments.common import results
path, worker = sys.argv[1:]
for i in range(10):
    row = {k: "x" for k in (*results.LEADING, *results.TRAILING)}
    results.write_row(path, {**row, "run_name": f"{worker}-{i}", "value": float(i)})
"""


def test_results_writes_are_safe_across_processes(tmp_path):
    path = tmp_path / "r.csv"
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w)], env=subprocess_env())
        for w in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    assert {r["run_name"] for r in results.read_rows(path)} == {
        f"{w}-{i}" for w in range(4) for i in range(10)
    }
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_git_commit_is_recorded():
    commit = results.git_commit()
    assert len(commit.removesuffix("-dirty")) == 40


@pytest.fixture(scope="module")
def source() -> data.ArraySource:
    cfg = ml_collections.ConfigDict(
        dict(
            name="fashion_mnist",
            idx_dir="/usr/share/datasets/fashion-mnist",
            tfds_data_dir="",
            train_size=100,
            test_size=45,
        )
    )
    return data.make_source(cfg)


def test_fashion_mnist_idx_files(source):
    assert source.image_shape == (28, 28, 1)
    assert source.train_images.dtype == np.uint8 and source.train_labels.dtype == np.int32
    assert source.train_labels.max() == 9 and source.num_classes == 10
    np.testing.assert_allclose(source.class_prior().sum(), 1.0, rtol=1e-6)


def test_train_batches_resume_exactly_and_cover_each_epoch(source):
    from_start = source.train_batches(32, seed=3, start_step=0)
    batches = [next(from_start) for _ in range(7)]  # 224 examples: crosses two epoch ends.
    resumed = next(source.train_batches(32, seed=3, start_step=5))
    np.testing.assert_array_equal(resumed["image"], batches[5]["image"])
    labels = np.concatenate([b["label"] for b in batches])
    for epoch in (labels[:100], labels[100:200]):
        np.testing.assert_array_equal(np.sort(epoch), np.sort(source.train_labels))
    other_seed = next(source.train_batches(32, seed=4, start_step=5))
    assert not np.array_equal(other_seed["label"], batches[5]["label"])


def test_test_batches_are_padded_and_masked(source):
    batches = list(source.test_batches(20))
    assert [b["mask"].sum() for b in batches] == [20, 20, 5]
    assert all(b["image"].shape == (20, 28, 28, 1) for b in batches)
    np.testing.assert_array_equal(
        np.concatenate([b["label"][b["mask"]] for b in batches]), source.test_labels
    )


def test_expected_calibration_error_by_hand():
    probs = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45], [0.5, 0.5]])
    labels = jnp.array([0, 1, 1, 0, 0])
    mask = jnp.array([True, True, True, True, False])
    sums = metrics.prediction_sums(probs, labels, jnp.arange(5.0), mask, num_bins=2)
    out = metrics.finalize(metrics.add(None, sums))
    # Bin [0.5, 1): confidences .9 .6 .7 .55, correct 1 0 1 1 → |3 − 2.75| / 4.
    assert out == pytest.approx({"accuracy": 0.75, "loss": 1.5, "ece": 0.0625, "support_size": 2.0})


def test_random_crop_flip_is_a_shifted_crop():
    images = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1) + 1
    out = preprocess.random_crop_flip(images, jax.random.key(0), pad=2)
    assert out.shape == images.shape
    for original, crop in zip(images, out, strict=True):
        values = set(np.asarray(crop).ravel()) - {0.0}
        assert values <= set(np.asarray(original).ravel())


@pytest.mark.parametrize(("name", "params"), [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_resnet_parameter_counts_match_the_reference_architectures(name, params):
    cfg = ml_collections.ConfigDict(dict(name=name, dtype="float32", width=64, stem="imagenet"))
    model = nnx.eval_shape(
        lambda: models.make_model(
            cfg, image_shape=(224, 224, 3), num_classes=1000, rngs=nnx.Rngs(0)
        )
    )
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == params


@pytest.mark.parametrize("block", [models.BasicBlock, models.Bottleneck])
def test_resnet_blocks_run_and_update_batch_statistics(block):
    model = models.ResNet(
        (16, 16, 3),
        7,
        block=block,
        stage_sizes=(1, 1),
        width=4,
        stem="cifar",
        dtype=jnp.bfloat16,
        rngs=nnx.Rngs(0),
    )
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    forward = nnx.jit(lambda model, x, train: model(x, train=train), static_argnames="train")
    logits = forward(model, x, train=True)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    after = nnx.state(model, nnx.BatchStat)
    assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a != b).any()), before, after)))
    assert forward(model, x, train=False).shape == (2, 7)


def test_config_diff_and_checks():
    old = {"a": 1, "b": {"c": 2, "d": [1, 2]}}
    new = {"a": 1, "b": {"c": 3, "d": [1, 2]}, "e": "x"}
    assert config.diff(old, new) == ["b.c: 2 → 3", "e: None → 'x'"]
    c = ml_collections.ConfigDict({"train": {"steps": -1}})
    with pytest.raises(config.ConfigError, match=r"config\.train\.steps = -1 is invalid"):
        config.check_positive(c, "train.steps")


def test_hardware_names_the_cpu(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\ncache size\t: 512 KB\n"
        "flags\t\t: fpu sse4_2 avx avx2 fma\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n"
    )
    real_path = sharding.Path
    monkeypatch.setattr(
        sharding, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p)
    )
    cores = os.cpu_count()
    assert sharding.hardware() == f"1x cpu (AMD EPYC, {cores} cores, AVX2, 512 KB cache)"
    cpuinfo.write_text("model name\t: Some CPU\n")
    assert sharding.hardware() == f"1x cpu (Some CPU, {cores} cores)"


def _toy_run(tmp_path, nan_at_step: int):
    """Linear regression whose batch for update ``nan_at_step`` holds a NaN."""
    mesh = sharding.make_mesh()
    tx = optax.sgd(0.1)
    state = trainer.create_state({"w": jnp.zeros(3)}, {}, tx, jax.random.key(0))
    state = sharding.replicate(state, mesh)

    def loss_fn(params, model_state, batch, rng):
        return jnp.mean((batch["x"] @ params["w"] - 1.0) ** 2), (model_state, {})

    def batches(start):
        for step in range(start, 100):
            x = np.ones((4, 3), np.float32)
            if step + 1 == nan_at_step:
                x[0, 0] = np.nan
            yield {"x": x}

    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep=5)
    writer = progress.MetricsWriter(tmp_path / "m.jsonl", resume_step=0)
    try:
        trainer.train(
            state,
            trainer.make_train_step(loss_fn, tx, optax.constant_schedule(0.1), mesh),
            batches,
            mesh=mesh,
            total_steps=8,
            examples_per_step=4,
            checkpointer=ckpt,
            writer=writer,
            log_every=4,
            checkpoint_every=2,
        )
    finally:
        ckpt.close()
    return state


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(trainer.NonFiniteLossError, match=r"at step 5; .*checkpoint \(step 4\)"):
        state = _toy_run(tmp_path, nan_at_step=5)
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep=5)
    assert ckpt.latest_step() == 4
    state = trainer.create_state({"w": jnp.zeros(3)}, {}, optax.sgd(0.1), jax.random.key(0))
    restored, record = ckpt.restore_latest(state)
    ckpt.close()
    assert int(restored.step) == 4 and np.isfinite(restored.params["w"]).all()
    assert record["train_time_s"] > 0


def test_tfds_sources_on_mock_data(monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from experiments.common import tfds_stream

    monkeypatch.setattr(data, "require_tfds", lambda name, data_dir: None)
    monkeypatch.setattr(tfds_stream, "_SHUFFLE_BUFFER", 8)  # Mock examples are slow to make.
    monkeypatch.setattr(tfds_stream.StreamSource, "num_test_examples", lambda self: 10)
    cfg = ml_collections.ConfigDict(
        dict(name="imagenet2012", tfds_data_dir=str(tmp_path), image_size=32)
    )
    cifar_cfg = ml_collections.ConfigDict(
        dict(name="cifar100", tfds_data_dir=str(tmp_path), train_size=0, test_size=0)
    )
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        cifar = data.make_source(cifar_cfg)
        source = data.make_source(cfg)
        train = source.train_batches(4, seed=0, start_step=0)
        first = [next(train) for _ in range(3)]
        resumed = next(source.train_batches(4, seed=0, start_step=2))
        test = list(source.test_batches(4))
    assert first[0]["image"].shape == (4, 32, 32, 3) and first[0]["image"].dtype == np.uint8
    np.testing.assert_array_equal(resumed["label"], first[2]["label"])
    assert [int(b["mask"].sum()) for b in test] == [4, 4, 2]
    assert source.num_classes == 1000
    assert isinstance(cifar, data.ArraySource) and cifar.image_shape == (32, 32, 3)
    assert cifar.train_labels.shape == (10,) and cifar.num_classes == 100


def test_a_run_killed_during_an_evaluation_evaluates_that_step_again(tmp_path):
    """Evaluation comes before the checkpoint of its step, so a kill during it loses no point."""
    mesh = sharding.make_mesh()
    tx = optax.sgd(0.1)
    train_cfg = ml_collections.ConfigDict(
        {
            "steps": 6,
            "log_every_steps": 2,
            "checkpoint_every_steps": 2,
            "keep_checkpoints": 5,
            "stop_after_steps": 0,
            "eval_every_steps": 2,
        }
    )

    def loss_fn(params, model_state, batch, rng):
        return jnp.mean((batch["x"] @ params["w"] - 1.0) ** 2), (model_state, {})

    def batches(start):
        for _ in range(start, 100):
            yield {"x": np.ones((4, 3), np.float32)}

    class KilledError(Exception):
        pass

    calls = []

    def evaluate(state):
        calls.append(int(state.step))
        if len(calls) == 2:  # the evaluation at step 4, the first time
            raise KilledError
        return {"w0": float(state.params["w"][0])}

    def run():
        state = trainer.create_state({"w": jnp.zeros(3)}, {}, tx, jax.random.key(0))
        return trainer.resume_and_train(
            sharding.replicate(state, mesh),
            trainer.make_train_step(loss_fn, tx, optax.constant_schedule(0.1), mesh),
            batches,
            workdir=tmp_path,
            mesh=mesh,
            train_cfg=train_cfg,
            examples_per_step=4,
            eval_fn=evaluate,
        )

    with pytest.raises(KilledError):
        run()
    result, _ = run()
    assert calls == [2, 4, 4]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    tested = [x for x in map(json.loads, lines) if x["split"] == "test"]
    assert [x["step"] for x in tested] == [2, 4]
    assert int(result.state.step) == 6
