"""Issue 12 end to end, in subprocesses on a real SQLite file: --set pins and typos, retraining
the best config (``--best``, ``best`` as a ``--config`` file), stop rules (and resuming after
them), ``--quiet`` / ``--verbose``, and ``sampler.seed``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import X_SWEEP, Project, child_env, finished, search_config, states, trials

#: A training function that reports 5 steps (the pruner may stop it) and returns a value
#: chosen by ``kind``: ``const`` (1.0 always), ``x`` (the sampled x), else (x - 0.25)^2.
SCRIPT = '''
import time
from hparam_joblib import current_trial_number, hparam_search, report

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    x = config.get("x", 0.5)
    for step in range(5):
        report(x + (4 - step) * 0.1, step)
        time.sleep(config.get("sleep", 0.0) / 5)
    number = current_trial_number()  # None when retrained outside a search
    assert number is None or number >= 0
    if config.get("kind") == "const":
        return 1.0
    if config.get("kind") == "x":
        return x
    return (x - 0.25) ** 2

if __name__ == "__main__":
    train()
'''

#: The sweep over the model beside x.
SWEEP_MODEL = "  model.width: {type: int, low: 1, high: 8}\n  model.solver: {type: categorical, choices: [adam, sgd]}\n"


def config_yaml(*, n_jobs: int, n_trials: int) -> str:
    """The test search: no direction (minimize), seed 1, a fixed ``model`` and three sweeps."""
    return search_config(n_jobs=n_jobs, n_trials=n_trials, direction=None, n_startup_trials=3, seed=1,
                         model="{depth: 2}", sweep=X_SWEEP + SWEEP_MODEL)


@pytest.fixture
def proj(project: Project) -> Project:
    """The standard project layout with this file's script."""
    project.script.write_text(SCRIPT)
    return project


def config(proj: Project, n_jobs: int = 2, n_trials: int = 8, extra: str = "") -> None:
    proj.write_config(config_yaml(n_jobs=n_jobs, n_trials=n_trials) + extra)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """Exit status 2 and one ``error:`` line on stderr; returns it."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


# --- --set -------------------------------------------------------------------------------------


def test_pinning_a_swept_parameter_fixes_it_in_every_trial(proj: Project) -> None:
    """--set model.solver=sgd: one true note, every trial's config has sgd, it is not a param."""
    config(proj)
    done = proj.run("--set", "model.solver=sgd", "sweep_parameters.model.width.high=3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "note: --set model.solver=sgd: pins sweep parameter model.solver to 'sgd' for this run" in done.stderr
    assert "added it as a new key" not in done.stderr
    rows = trials(proj.db("exp_t"))
    assert len(rows) == 8 and all(r["state"] == "COMPLETE" for r in rows)
    for r in rows:
        assert r["user_attrs"]["config"]["model"]["solver"] == "sgd"
        assert r["user_attrs"]["config"]["model"]["depth"] == 2
        assert "model.solver" not in r["params"]
        assert 1 <= r["params"]["model.width"] <= 3  # the dotted sweep parameter was reached


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("sweep_parameters.model.width.step=0", ("(with --set 'sweep_parameters.model.width.step=0'): "
         "sweep_parameters.model.width.step: must be > 0, got 0")),
        ("sweep_parameters.model.width=null", "to fix its value for this run instead: --set model.width=VALUE"),
        ("n_job=4", "--set 'n_job=4': n_job is not in config.yaml and is not a setting; did you mean 'n_jobs'"),
        ("timout=60", "did you mean 'timeout'"),
    ],
)
def test_bad_set_items_stop_before_anything_is_created(proj: Project, item: str, fragment: str) -> None:
    """A bad or mistyped --set item: one line naming it, exit 2, no database."""
    config(proj)
    line = one_error_line(proj.run("--set", item))
    assert fragment in line
    assert not (proj.root / "optuna_studies").exists()


def test_documented_settings_are_not_new_keys(proj: Project) -> None:
    """--set trial_timeout=30 / timeout=600 (absent from the file): no 'new key' note, and they act."""
    config(proj, n_trials=3)
    done = proj.run("--set", "trial_timeout=30", "timeout=600", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "new key" not in done.stderr and "note:" not in done.stderr
    assert "# stop:    timeout 600 s (running trials then get stop_grace 60 s)" in done.stdout


# --- retraining --------------------------------------------------------------------------------


def test_best_retrains_in_process_and_best_yaml_is_a_config(proj: Project) -> None:
    """--best prints the best trial's value (report() inside is harmless, nothing written);
    `best` output is a --config file (one trial, own study) and a dict for train()."""
    config(proj, n_trials=6, extra="pruner: none\n")
    assert proj.run().returncode == 0
    db = proj.db("exp_t")
    rows = [r for r in trials(db) if r["state"] == "COMPLETE"]
    best = min(rows, key=lambda r: r["value"])

    done = proj.run("--best")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == f"value: {best['value']:.6g}\n"
    assert f"retraining trial {best['number']} of study exp_t (value {best['value']:.6g}) in this process" in done.stderr
    assert len(trials(db)) == 6  # nothing written

    shown = subprocess.run(
        [sys.executable, "-m", "hparam_joblib", "best", str(db)], check=False, cwd=proj.root,
        capture_output=True, text=True, timeout=60, env=child_env(),
    )
    assert shown.returncode == 0, shown.stderr
    (proj.root / "best.yaml").write_text(shown.stdout)
    again = proj.run("--config", "best.yaml")
    assert again.returncode == 0, again.stderr[-2000:]
    retrained = trials(proj.db("exp_t_best"))
    assert [r["state"] for r in retrained] == ["COMPLETE"]
    assert retrained[0]["value"] == pytest.approx(best["value"])
    assert retrained[0]["user_attrs"]["config"]["x"] == best["params"]["x"]

    code = (
        "import yaml, script; "
        "print(script.train(yaml.safe_load(open('best.yaml'))))"
    )
    direct = subprocess.run([sys.executable, "-c", code], check=False, cwd=proj.root, capture_output=True, text=True,
                            timeout=60, env=child_env())
    assert direct.returncode == 0, direct.stderr
    assert float(direct.stdout) == pytest.approx(best["value"])


def test_best_before_any_search_is_one_line(proj: Project) -> None:
    """--best with no database yet: one line, exit 2, nothing created."""
    config(proj)
    assert "no study database yet: run the search first" in one_error_line(proj.run("--best"))
    assert not (proj.root / "optuna_studies").exists()


# --- stop rules --------------------------------------------------------------------------------


def test_no_improvement_stops_exactly_and_resume_continues(proj: Project) -> None:
    """A constant value: trial 0 is the best, the next 4 do not beat it -> 5 finished (one worker,
    exact); the same command continues with a fresh count -> 4 more."""
    config(proj, n_jobs=1, n_trials=100, extra="kind: const\nstop_no_improvement: 4\npruner: none\n")
    done = proj.run()
    assert done.returncode == 0, done.stderr[-2000:]
    db = proj.db("exp_t")
    assert states(db) == {"COMPLETE": 5}
    assert "study exp_t stopped: 5/100 finished" in done.stdout
    assert ("stopped by:   stop_no_improvement: 4 finished trials in a row without beating the best value "
            "(1, trial 0); the same command continues the search") in done.stdout
    again = proj.run()
    assert again.returncode == 0, again.stderr[-2000:]
    assert states(db) == {"COMPLETE": 9}
    assert "stopped: 9/100 finished" in again.stdout


@pytest.mark.slow
def test_no_improvement_with_two_workers_keeps_the_budget(proj: Project) -> None:
    """Two workers: the stop fires after 3 non-improving trials; the one still running finishes."""
    config(proj, n_jobs=2, n_trials=50, extra="kind: const\nstop_no_improvement: 3\npruner: none\n")
    done = proj.run()
    assert done.returncode == 0, done.stderr[-2000:]
    counts = states(proj.db("exp_t"))
    assert set(counts) == {"COMPLETE"} and 4 <= counts["COMPLETE"] <= 5, counts
    assert "starting again" not in done.stderr


def test_stop_at_value(proj: Project) -> None:
    """stop_at_value (minimize): the run stops at the first trial whose value is <= it."""
    config(proj, n_jobs=1, n_trials=200, extra="kind: x\nstop_at_value: 0.2\npruner: none\n")
    done = proj.run()
    assert done.returncode == 0, done.stderr[-2000:]
    rows = sorted(trials(proj.db("exp_t")), key=lambda r: r["complete"])
    assert rows[-1]["value"] <= 0.2 and all(r["value"] > 0.2 for r in rows[:-1])
    assert f"stopped by:   trial {rows[-1]['number']} reached stop_at_value: {rows[-1]['value']:.6g} <= 0.2" in done.stdout


@pytest.mark.slow
def test_timeout_stops_starting_trials(proj: Project) -> None:
    """timeout: no trial starts after it; the summary says so; nothing left RUNNING or FAIL."""
    config(proj, n_trials=10000, extra="sleep: 0.5\ntimeout: 6\npruner: none\n")
    done = proj.run()
    assert done.returncode == 0, done.stderr[-2000:]
    db = proj.db("exp_t")
    counts = states(db)
    assert set(counts) == {"COMPLETE"} and 2 <= counts["COMPLETE"] < 10000, counts
    assert "stopped by:   timeout: 6 s passed, so no new trial started" in done.stdout
    starts = sorted(r["start"] for r in trials(db))
    assert (starts[-1] - starts[0]).total_seconds() < 6


@pytest.mark.slow
def test_trials_running_past_the_grace_are_stopped_then_rerun(proj: Project) -> None:
    """timeout 10 s, stop_grace 2 s, 60 s trials: both stopped near 12 s, FAIL with the reason;
    the next run re-runs them and the study finishes exactly."""
    config(proj, n_trials=2, extra="sleep: 60\ntimeout: 10\nstop_grace: 2\npruner: none\n")
    done = proj.run(timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    db = proj.db("exp_t")
    assert states(db) == {"FAIL": 2}
    reasons = {r["user_attrs"]["failure_reason"] for r in trials(db)}
    assert reasons == {
        ("stopped: still running stop_grace (2 s) after the search stopped (timeout: 10 s passed, so no new "
        "trial started); not counted, the next run re-runs it")
    }
    assert "2 trial(s) still running after stop_grace (2 s) were stopped" in done.stdout
    again = proj.run("--set", "sleep=0", "timeout=null")
    assert again.returncode == 0, again.stderr[-2000:]
    assert states(db) == {"FAIL": 2, "COMPLETE": 2}


# --- output ------------------------------------------------------------------------------------


PRUNING = "pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 0}\n"


@pytest.mark.slow
def test_pruned_trials_have_no_line_each_unless_verbose(proj: Project) -> None:
    """Normal: pruned trials only in the bar/summary counts; --verbose: one line each and the
    storage latency; --quiet: no bar, no info lines, the summary."""
    config(proj, n_jobs=2, n_trials=20, extra=PRUNING)
    normal = proj.run()
    assert normal.returncode == 0, normal.stderr[-2000:]
    pruned = states(proj.db("exp_t")).get("PRUNED", 0)
    assert pruned >= 1
    assert "pruned by the pruner" not in normal.stderr
    assert f"PRUNED {pruned}" in normal.stdout
    assert "storage calls" not in normal.stdout and "lock retries: " in normal.stdout

    verbose = proj.run("--verbose", "--set", "tag=v")
    assert verbose.returncode == 0
    pruned_v = states(proj.db("exp_v")).get("PRUNED", 0)
    assert verbose.stderr.count("pruned by the pruner at step") == pruned_v
    assert "workers' storage calls:" in verbose.stdout

    quiet = proj.run("--quiet", "--set", "tag=q")
    assert quiet.returncode == 0
    assert finished(proj.db("exp_q")) == 20
    assert quiet.stderr == ""
    assert "study exp_q done: 20/20 finished" in quiet.stdout


@pytest.mark.slow
def test_verbosity_key_in_the_file(proj: Project) -> None:
    """verbosity: quiet in the YAML file does what --quiet does; --verbose wins over it."""
    config(proj, n_trials=4, extra="verbosity: quiet\n")
    done = proj.run()
    assert done.returncode == 0 and done.stderr == ""
    loud = proj.run("--verbose", "--set", "tag=l")
    assert "trials:" in loud.stderr and "workers' storage calls:" in loud.stdout


# --- sampler.seed ------------------------------------------------------------------------------


@pytest.mark.slow
def test_sampler_seed_is_the_top_level_seed(tmp_path: Path) -> None:
    """sampler: {type: random, seed: 5} samples exactly what seed: 5 does (one worker)."""
    params = []
    for name, extra in (("a", "sampler: {type: random, seed: 5}\n"), ("b", "sampler: random\n")):
        proj = Project(tmp_path / name)
        proj.root.mkdir()
        proj.script.write_text(SCRIPT)
        text = config_yaml(n_jobs=1, n_trials=5).replace("seed: 1\n", "" if name == "a" else "seed: 5\n")
        proj.write_config(text + extra + "pruner: none\n")
        done = proj.run()
        assert done.returncode == 0, done.stderr[-2000:]
        params.append([r["params"] for r in sorted(trials(proj.db("exp_t")), key=lambda r: r["number"])])
    assert params[0] == params[1]
