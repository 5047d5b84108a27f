"""The local sweep runner: dry run, skipping finished runs, reporting failures."""

import json
import subprocess
import sys

import pytest
from exputil import subprocess_env

from experiments import sweep
from experiments.classification import sweeps
from experiments.common import results

TINY = {
    "train.steps": 2,
    "train.batch_size": 32,
    "data.train_size": 64,
    "data.test_size": 50,
    "eval.batch_size": 50,
}


def _sweep(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", "classification", *args],
        cwd=tmp_path,  # Relative paths (results, runs, logs) land in tmp_path.
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _finish(csv, names):
    for name in names:
        row = {k: "" for k in (*results.LEADING, *results.TRAILING)}
        key = {"experiment": "classification", "config_name": "fashion_mnist", "run_name": name}
        results.write_row(csv, {**row, **key})


def test_sweep_has_the_48_runs_of_the_issue():
    names = [r.name for r in sweeps.SWEEP.runs]
    assert len(names) == len(set(names)) == 48
    assert {r.overrides["loss.divergence"] for r in sweeps.SWEEP.runs} == {
        "kl",
        "reverse_kl",
        "chi2",
        "hellinger",
        "js",
        "alpha:1.25",
        "alpha:1.5",
        "alpha:2",
    }


def test_dry_run_lists_only_unfinished_runs(tmp_path):
    csv = tmp_path / "r.csv"
    _finish(csv, [r.name for r in sweeps.SWEEP.runs[:40]])
    proc = _sweep(tmp_path, "--dry-run", f"--set=results_csv={csv}")
    assert proc.returncode == 0, proc.stderr
    commands = [x for x in proc.stdout.splitlines() if "-m experiments.classification" in x]
    assert len(commands) == 8
    assert "48 runs, 40 done" in proc.stdout
    assert f"--config.run_name={sweeps.SWEEP.runs[40].name}" in commands[0]
    assert len(results.read_rows(csv)) == 40 and not (tmp_path / "runs").exists()


def test_sweep_skips_finished_runs_and_names_failures(tmp_path):
    csv = tmp_path / "r.csv"
    seed0 = [r.name for r in sweeps.SWEEP.runs if r.name.endswith("seed0")]
    _finish(csv, [n for n in seed0 if n not in ("kl-uniform-seed0", "chi2-unit-seed0")])
    # A workdir holding another config makes that run fail (it refuses to resume).
    bad = tmp_path / "runs/classification/fashion_mnist/chi2-unit-seed0"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text(json.dumps({"seed": 99}))
    sets = [f"--set={k}={v}" for k, v in {**TINY, "results_csv": csv}.items()]
    proc = _sweep(tmp_path, "--filter=seed0", "--max-parallel=2", *sets)
    assert proc.returncode == 1
    assert "2 to run" in proc.stdout
    assert "1 failed: chi2-unit-seed0" in proc.stderr
    rows = {r["run_name"]: r for r in results.read_rows(csv)}
    assert len(rows) == 15 and float(rows["kl-uniform-seed0"]["test_accuracy"]) >= 0
    log = tmp_path / "runs/sweeps/classification/chi2-unit-seed0.log"
    assert "holds a run with another config" in log.read_text()


def test_unknown_sweep_name_lists_the_valid_ones(capsys):
    assert sweep.main(["no_such_sweep"]) == 2
    assert "unknown sweep 'no_such_sweep'; valid sweeps: classification" in capsys.readouterr().err


def test_rerunning_a_finished_sweep_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "r.csv"
    _finish(csv, [r.name for r in sweeps.SWEEP.runs])
    before = csv.read_bytes()
    for executor in ("local", "slurm"):
        argv = ["classification", f"--executor={executor}", f"--set=results_csv={csv}"]
        assert sweep.main(argv) == 0
    assert csv.read_bytes() == before
    assert not (tmp_path / "runs").exists()  # No run directory, log or job folder.


# A run of the tiny sweep: writes its result row, or fails when its name says so.
_FAKE_RUN = """
import sys
from experiments.common import results
csv, name = sys.argv[1:]
print("running", name)
if name.endswith("fail"):
    sys.exit(3)
row = {k: "" for k in (*results.LEADING, *results.TRAILING)}
row.update(experiment="classification", config_name="fashion_mnist", run_name=name)
results.write_row(csv, row)
"""


def _fake_run(csv, name):
    return [sys.executable, "-c", _FAKE_RUN, str(csv), name]


@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_submitit_executor_skips_finished_runs_and_names_failures(
    cluster, tmp_path, monkeypatch, capsys
):
    """The slurm executor's path through submitit's local / debug executor, on cheap runs."""
    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "r.csv"
    tiny = sweep.Sweep(
        experiment="classification",
        config=sweeps.SWEEP.config,
        runs=tuple(sweep.Run(n, {}) for n in ("a", "b-fail", "c", "d")),
    )
    monkeypatch.setattr(sweep, "load_sweep", lambda name: tiny)
    monkeypatch.setattr(sweep, "command", lambda s, run, extra: _fake_run(csv, run.name))
    _finish(csv, ["d"])
    args = ["classification", "--executor=slurm", f"--cluster={cluster}", "--time=5"]
    assert sweep.main([*args, f"--set=results_csv={csv}"]) == 1
    out, err = capsys.readouterr()
    assert "4 runs, 1 done" in out and "3 to run" in out
    assert "[3/3]" in out and "2 ok, 1 failed, 1 skipped" in out
    assert "b-fail: FAILED (exit 3" in out and "1 failed: b-fail" in err
    assert sorted(r["run_name"] for r in results.read_rows(csv)) == ["a", "c", "d"]
    logs = tmp_path / "runs/sweeps/classification"
    assert (logs / "b-fail.log").read_text().strip() == "running b-fail"
    assert any((logs / "submitit").iterdir())
    # Once the failure is fixed, only the failed run runs again.
    monkeypatch.setattr(sweep, "command", lambda s, run, extra: _fake_run(csv, "b"))
    assert sweep.main([*args, f"--set=results_csv={csv}"]) == 0
    assert "1 to run" in capsys.readouterr().out
