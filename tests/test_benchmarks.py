"""Each benchmark runs end to end in ``--quick`` mode and writes the documented CSV columns."""

import csv

import pytest

from experiments.benchmarks import main

PROVENANCE = {"hardware", "device_kind", "jax_version", "git_commit", "timestamp"}
COLUMNS = {
    "losses": {"n", "v", "divergence", "reference_measure", "solver", "repeats", "median_s",
               "ratio_to_ce", "peak_bytes", "memory_ratio_to_ce", "status"},
    "lm_head": {"n", "d", "v", "divergence", "path", "chunk_size", "median_s",
                "ratio_to_unfused", "peak_bytes", "memory_ratio_to_unfused", "loss_rel_diff",
                "dhidden_rel_diff", "dweight_rel_diff"},
    "roots": {"divergence", "reference_measure", "v", "solver", "num_iters", "max_error",
              "median_error", "error_wide", "error_ties", "max_mass_error"},
}  # fmt: skip


@pytest.mark.parametrize("which", sorted(COLUMNS))
def test_quick_run_writes_its_table(which, tmp_path):
    path = main.main([which, "--quick", "--out", str(tmp_path)])
    assert path == tmp_path / f"{which}.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    assert COLUMNS[which] | PROVENANCE | {"benchmark", "mode"} <= set(rows[0])
    assert all(row["benchmark"] == which and row["mode"] == "quick" for row in rows)
    assert all(row[k] for row in rows for k in PROVENANCE)
    if which == "losses":
        assert all(row["status"] == "ok" and float(row["median_s"]) > 0 for row in rows)
        baseline = [row for row in rows if row["divergence"] == "cross_entropy"]
        assert len(baseline) == 1 and float(baseline[0]["ratio_to_ce"]) == 1.0
    if which == "lm_head":
        assert {row["path"] for row in rows} == {"unfused", "fused_sum", "fused_none"}
        assert all(float(row["loss_rel_diff"]) < 1e-5 for row in rows)
    if which == "roots":
        default = [row for row in rows if row["num_iters"] == "default"]
        assert default and all(float(row["max_error"]) < 1e-5 for row in default)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_a_rerun_of_some_sizes_keeps_the_other_rows(tmp_path):
    path = main.main(["losses", "--quick", "--out", str(tmp_path)])
    main.main(["losses", "--quick", "--out", str(tmp_path), "--sizes", "8:32"])
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted({row["v"] for row in rows}) == ["32", "64"]
    assert len(rows) == len({(row["v"], row["divergence"], row["solver"]) for row in rows})


def test_sizes_only_for_losses(tmp_path):
    with pytest.raises(SystemExit):
        main.main(["roots", "--quick", "--out", str(tmp_path), "--sizes", "8:32"])
