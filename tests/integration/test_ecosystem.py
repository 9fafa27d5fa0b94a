"""Samplers, pruners, report(), conditions, enqueue and several objectives, end to end.

Real scripts in subprocesses, real loky workers (n_jobs 2), a real SQLite file; assertions read
the study back with Optuna.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.conftest import REPO, Project, states, trials

#: Whole searches in real processes (kill loops, clusters, servers): `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow

#: The training function: "mode" picks a behaviour; curves call report() once per step.
SCRIPT = '''
import json, time
from hparam_joblib import current_trial_number, hparam_search, report

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    mode = config.get("mode", "plain")
    x = config.get("x", 0.5)
    if config.get("record"):
        with open(config["record"], "a") as fh:
            fh.write(json.dumps({"trial": current_trial_number(), "config": config}) + "\\n")
    if mode == "raise":
        raise ValueError("boom from trial")
    if mode in ("curve", "swallow", "swallow_all"):
        try:
            for step in range(config.get("steps", 4)):
                time.sleep(config.get("step_sleep", 0.0))
                report(x + 0.01 * step, step)
        except Exception:  # must not catch the prune
            if mode == "swallow":
                return 123.0
            raise
        except BaseException:  # catches the prune: the trial must still end PRUNED
            if mode == "swallow_all":
                return 123.0
            raise
        return x
    if mode == "multi":
        return [x] if x == config.get("short_at") else [x, (x - 0.5) ** 2]
    return (x - 0.25) ** 2

if __name__ == "__main__":
    train()
'''

HEAD = """
experiment_name: exp
tag: t
n_jobs: 2
seed: 11
"""


@pytest.fixture
def eco(project: Project) -> Project:
    """The standard project, with the reporting training script."""
    project.script.write_text(SCRIPT)
    return project


def _run_ok(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    done = project.run(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def _study(db: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    return optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")


def _owner(row: dict[str, Any]) -> int:
    return int(row["system_attrs"]["hparam_joblib:owner"]["pid"])


# -- samplers ------------------------------------------------------------------------------------


def _random_draws(seed: int, n: int) -> list[float]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(n)]


def test_random_sampler_gives_each_worker_seed_plus_index_and_pruner_none(eco: Project) -> None:
    """sampler random + seed: each worker draws RandomSampler(seed + i)'s sequence; pruner none
    records the reported curve and prunes nothing."""
    eco.write_config(HEAD + """
n_trials: 8
mode: curve
steps: 3
sampler: {type: random}
pruner: {type: none}
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0}
""")
    _run_ok(eco)
    rows = trials(eco.db("exp_t"))
    assert [r["state"] for r in rows] == ["COMPLETE"] * 8
    assert all(len(_study(eco.db("exp_t")).trials[r["number"]].intermediate_values) == 3 for r in rows)
    expected = {11: _random_draws(11, 8), 12: _random_draws(12, 8)}
    by_worker: dict[int, list[float]] = {}
    for row in sorted(rows, key=lambda r: r["number"]):
        by_worker.setdefault(_owner(row), []).append(row["params"]["x"])
    used = set()
    for seq in by_worker.values():
        matches = [s for s, draws in expected.items() if draws[: len(seq)] == seq]
        assert len(matches) == 1, (seq, expected)
        used.add(matches[0])
    assert len(used) == len(by_worker)  # two workers -> two distinct seeds


def test_grid_sampler_covers_exactly_the_grid(eco: Project) -> None:
    """sampler grid: 3 x-steps x 2 choices = 6 trials, each grid point exactly once."""
    eco.write_config(HEAD + """
n_trials: 6
sampler: {type: grid}
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0, step: 0.5}
  c: {type: categorical, choices: [a, b]}
""")
    _run_ok(eco)
    rows = trials(eco.db("exp_t"))
    points = sorted((r["params"]["x"], r["params"]["c"]) for r in rows)
    assert points == sorted(itertools.product([0.0, 0.5, 1.0], ["a", "b"]))
    assert all("grid_id" in r["system_attrs"] for r in rows)


@pytest.mark.parametrize(
    ("sampler", "mark"),
    [
        pytest.param("{type: cmaes, n_startup_trials: 2}", "trial:cma:", marks=pytest.mark.skipif(
            importlib.util.find_spec("cmaes") is None, reason="cmaes not installed (pip install cmaes)"),
            id="cmaes"),
        pytest.param("{type: qmc, scramble: true}", "study:qmc:", id="qmc"),
        pytest.param("{type: tpe, n_startup_trials: 2, multivariate: true, group: true}", "", id="tpe"),
        pytest.param("{type: gp, n_startup_trials: 2}", "", marks=pytest.mark.skipif(
            importlib.util.find_spec("torch") is None, reason="torch not installed"), id="gp"),
    ],
)
def test_sampler_from_yaml_runs_and_leaves_its_trace(eco: Project, sampler: str, mark: str) -> None:
    """Each sampler type runs a small search to the exact budget; its own attrs show it ran."""
    eco.write_config(HEAD + f"""
n_trials: 6
sampler: {sampler}
sweep_parameters:
  x: {{type: float, low: 0.0, high: 1.0}}
  y: {{type: int, low: 1, high: 4}}
""")
    _run_ok(eco)
    db = eco.db("exp_t")
    assert states(db) == {"COMPLETE": 6}
    if mark.startswith("trial:"):
        assert any(k.startswith(mark[6:]) for r in trials(db) for k in r["system_attrs"])
    elif mark.startswith("study:"):
        study = _study(db)
        assert any(k.startswith(mark[6:]) for k in study._storage.get_study_system_attrs(study._study_id))


def test_nsgaii_multi_objective_pareto_front_and_wrong_length(eco: Project) -> None:
    """directions [minimize, maximize] with NSGA-II: 2 values per trial, a 1-value return is a
    PRUNED failure with its reason, the summary prints the Pareto front, and resuming with one
    direction is refused."""
    eco.write_config(HEAD + """
n_trials: 6
directions: [minimize, maximize]
mode: multi
short_at: 0.2
sampler: {type: nsgaii, population_size: 4}
enqueue: [{x: 0.2}]
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0}
""")
    done = _run_ok(eco)
    db = eco.db("exp_t")
    study = _study(db)
    assert len(study.trials) == 6
    first = study.trials[0]
    assert first.params["x"] == 0.2 and first.state.name == "PRUNED"
    assert "returned 1 value [0.2], but directions has 2" in first.user_attrs["failure_reason"]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 5 and all(len(t.values) == 2 for t in complete)
    assert all("NSGAIISampler:generation" in t.system_attrs for t in complete)
    assert "pareto front:" in done.stdout and "best value" not in done.stdout
    front = {t.number for t in study.best_trials}
    for number in front:
        assert f"trial {number}: [" in done.stdout or len(front) > 5
    again = eco.run("--set", "directions=[minimize]")
    assert again.returncode == 2
    assert "directions ['minimize', 'maximize']" in again.stderr and "'minimize'" in again.stderr


# -- pruners and report() ------------------------------------------------------------------------


def test_report_prunes_with_reason_and_step_even_if_caught(eco: Project) -> None:
    """threshold pruner: bad curves end PRUNED at step 2 ('pruner', pruned_step) even when the
    loop catches Exception or BaseException; a raising trial keeps its own error reason."""
    eco.write_config(HEAD + """
n_trials: 8
sampler: {type: random}
pruner: {type: threshold, upper: 0.5, n_warmup_steps: 2}
enqueue:
  - {x: 0.9, mode: swallow}
  - {x: 0.9, mode: swallow_all}
  - {x: 0.9, mode: curve}
  - {x: 0.1, mode: curve}
  - {x: 0.8, mode: raise}
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0}
  mode: {type: categorical, choices: [curve, swallow, swallow_all, raise]}
""")
    done = _run_ok(eco, "--verbose")  # one line per pruned trial only at --verbose (issue 12)
    study = _study(eco.db("exp_t"))
    assert len(study.trials) == 8
    for t in study.trials:
        reason = t.user_attrs.get("failure_reason", "")
        if t.params["mode"] == "raise":
            assert t.state.name == "PRUNED" and reason == "ValueError: boom from trial"
            assert "pruned_step" not in t.user_attrs
        elif t.params["x"] + 0.02 > 0.5:  # the curve is x + 0.01 * step
            assert t.state.name == "PRUNED", t
            assert "pruner" in reason and "step 2" in reason
            assert t.user_attrs["pruned_step"] == 2
            assert sorted(t.intermediate_values) == [0, 1, 2]
        else:
            assert t.state.name == "COMPLETE" and t.value == t.params["x"]
            assert "failure_reason" not in t.user_attrs
    assert "pruned by the pruner at step 2" in done.stderr


@pytest.mark.parametrize(
    "pruner",
    ["{type: median, n_startup_trials: 2}", "{type: percentile, percentile: 50.0, n_startup_trials: 2}"],
    ids=["median", "percentile"],
)
def test_median_and_percentile_prune_the_bad_curves(eco: Project, pruner: str) -> None:
    """Three good curves complete; the two bad ones queued after them are pruned at step 0
    (when the fourth trial starts, at most one of the first three is still running)."""
    eco.write_config(HEAD + f"""
n_trials: 5
mode: curve
steps: 3
step_sleep: 0.05
sampler: {{type: random}}
pruner: {pruner}
enqueue: [{{x: 0.3}}, {{x: 0.2}}, {{x: 0.1}}, {{x: 0.9}}, {{x: 0.95}}]
sweep_parameters:
  x: {{type: float, low: 0.0, high: 1.0}}
""")
    _run_ok(eco)
    rows = sorted(trials(eco.db("exp_t")), key=lambda r: r["number"])
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3 + ["PRUNED"] * 2
    assert [r["user_attrs"].get("pruned_step") for r in rows] == [None, None, None, 0, 0]


@pytest.mark.parametrize(
    "pruner",
    ["{type: successive_halving, min_resource: 1, reduction_factor: 2}",
     "{type: hyperband, min_resource: 1, max_resource: 4, reduction_factor: 2}"],
    ids=["successive_halving", "hyperband"],
)
def test_rung_pruners_record_their_rungs(eco: Project, pruner: str) -> None:
    """Successive halving and Hyperband run in the workers: trials carry completed_rung_* attrs,
    and whatever they prune is recorded with its step."""
    eco.write_config(HEAD + f"""
n_trials: 8
mode: curve
steps: 4
pruner: {pruner}
sweep_parameters:
  x: {{type: float, low: 0.0, high: 1.0}}
""")
    _run_ok(eco)
    rows = trials(eco.db("exp_t"))
    assert len(rows) == 8 and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    assert sum("completed_rung_0" in r["system_attrs"] for r in rows) >= 4
    for row in rows:
        if row["state"] == "PRUNED":
            assert "pruner" in row["user_attrs"]["failure_reason"]
            assert isinstance(row["user_attrs"]["pruned_step"], int)


# -- conditions and enqueue ----------------------------------------------------------------------


def test_conditional_parameters_are_absent_when_false(eco: Project) -> None:
    """A parameter whose condition is false is neither sampled nor in the config (declared
    before the parameter it depends on, nested, and chained)."""
    record = eco.root / "seen.jsonl"
    eco.write_config(HEAD + f"""
n_trials: 8
record: {record}
sampler: {{type: random}}
enqueue: [{{optimizer: SGD, layers: 3}}, {{optimizer: Adam, layers: 1}}]
sweep_parameters:
  opt.momentum: {{type: float, low: 0.0, high: 0.9, when: {{optimizer: SGD}}}}
  optimizer: {{type: categorical, choices: [SGD, Adam]}}
  layers: {{type: int, low: 1, high: 3}}
  width: {{type: int, low: 8, high: 64, when: {{layers: [2, 3]}}}}
  dropout: {{type: categorical, choices: [0.0, 0.5], when: {{width: [8, 9, 10, 11, 12], optimizer: SGD}}}}
""")
    done = _run_ok(eco, "--dry-run")
    assert "opt.momentum: float [0.0, 0.9] when optimizer == 'SGD'" in done.stdout
    assert "# sampler: random" in done.stdout and "# pruner:  none" in done.stdout
    assert done.stdout.index("#   optimizer:") < done.stdout.index("#   opt.momentum:")  # sorted
    _run_ok(eco)
    rows = trials(eco.db("exp_t"))
    seen = {json.loads(line)["trial"]: json.loads(line)["config"] for line in record.read_text().splitlines()}
    assert len(rows) == 8 and len(seen) == 8
    assert {r["params"]["optimizer"] for r in rows} == {"SGD", "Adam"}
    for row in rows:
        params = row["params"]
        for config in (row["user_attrs"]["config"], seen[row["number"]]):
            sgd = params["optimizer"] == "SGD"
            assert ("opt.momentum" in params) == sgd
            assert ("momentum" in config.get("opt", {})) == sgd
            assert ("width" in params) == ("width" in config) == (params["layers"] >= 2)
            chained = sgd and params.get("width", 0) in range(8, 13)
            assert ("dropout" in params) == ("dropout" in config) == chained


def test_enqueue_runs_first_counts_and_is_not_requeued_on_resume(eco: Project) -> None:
    """Enqueued entries (dotted and nested forms) are trials 0..2 and part of n_trials; a resume
    with a larger budget queues none of them again."""
    eco.write_config(HEAD + """
n_trials: 5
sampler: {type: random}
enqueue:
  - {x: 0.125}
  - {model: {lr: 0.01}}
  - {x: 0.375, model.lr: 0.001}
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0}
  model.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
""")
    done = _run_ok(eco)
    assert "queued 3 trial(s)" in done.stderr
    db = eco.db("exp_t")
    rows = sorted(trials(db), key=lambda r: r["number"])
    assert len(rows) == 5 and states(db) == {"COMPLETE": 5}
    assert rows[0]["params"]["x"] == 0.125
    assert rows[1]["params"]["model.lr"] == 0.01
    assert (rows[2]["params"]["x"], rows[2]["params"]["model.lr"]) == (0.375, 0.001)
    assert [("fixed_params" in r["system_attrs"]) for r in rows] == [True] * 3 + [False] * 2
    again = _run_ok(eco, "--set", "n_trials=8")
    assert "queued" not in again.stderr
    rows = trials(db)
    assert len(rows) == 8 and sum("fixed_params" in r["system_attrs"] for r in rows) == 3


# -- config errors -------------------------------------------------------------------------------

SPACE = """
n_trials: 4
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0}
  c: {type: categorical, choices: [a, b]}
"""

ERRORS = [
    ("unknown-sampler", "sampler: {type: annealing}", ["sampler.type", "annealing", "tpe", "grid"]),
    ("unknown-kwarg", "sampler: {type: tpe, n_startup: 3}",
     ["sampler.n_startup", "valid:", "n_startup_trials", "multivariate"]),
    ("unknown-pruner-kwarg", "pruner: {type: median, patience: 3}",
     ["pruner.patience", "valid:", "n_warmup_steps"]),
    ("grid-float-no-step", "sampler: grid", ["sweep_parameters.x", "grid", "step"]),
    ("condition-unknown-param", "sweep_parameters:\n  y: {type: int, low: 1, high: 2, when: {colour: red}}",
     ["sweep_parameters.y.when.colour", "no sweep parameter"]),
    ("condition-bad-value", "sweep_parameters:\n  y: {type: int, low: 1, high: 2, when: {c: z}}",
     ["sweep_parameters.y.when.c", "'z'", "['a', 'b']"]),
    ("condition-cycle", (
        "sweep_parameters:\n  y: {type: int, low: 1, high: 2, when: {z: 1}}\n"
        "  z: {type: int, low: 1, high: 2, when: {y: 2}}"
    ), ["when", "cycle", "y -> z -> y"]),
    ("pruner-multi", "directions: [minimize, maximize]\npruner: median", ["pruner.type", "one objective"]),
    ("enqueue-unknown", "enqueue: [{w: 1}]", ["enqueue[0].w", "not a sweep parameter"]),
    ("enqueue-out-of-range", "enqueue: [{x: 2.0}]", ["enqueue[0].x", "2.0"]),
]
if importlib.util.find_spec("torch") is None:
    ERRORS.append(("gp-needs-torch", "sampler: gp", ["sampler.type", "torch", "pip install torch"]))


@pytest.mark.parametrize("extra, expected", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_ecosystem_config_errors_are_one_line_exit_2(eco: Project, extra: str, expected: list[str]) -> None:
    """Every new kind of bad config: exit 2, one 'error:' line naming the key, nothing created."""
    text = HEAD + SPACE
    if extra.startswith("sweep_parameters:"):
        text = text.replace("  c: {type: categorical, choices: [a, b]}\n", "  c: {type: categorical, choices: [a, b]}\n"
                            + extra.split("\n", 1)[1] + "\n")
    else:
        text += extra + "\n"
    eco.write_config(text)
    done = eco.run()
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for piece in expected:
        assert piece in lines[0], (piece, lines[0])
    assert not (eco.root / "optuna_studies").exists()


# -- the example ---------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn not installed")
def test_sklearn_pruning_example_runs(tmp_path: Path) -> None:
    """examples/sklearn_pruning.py as shipped, shortened with --set: every trial reports each
    epoch, conditional parameters follow their conditions, nothing fails."""
    (tmp_path / "config").mkdir()
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "config" / "sklearn_pruning.yaml", tmp_path / "config")
    shutil.copy(REPO / "examples" / "sklearn_pruning.py", tmp_path / "examples")
    proj = Project(tmp_path)
    done = proj.run("--set", "n_trials=8", "data.epochs=5", script=tmp_path / "examples" / "sklearn_pruning.py")
    assert done.returncode == 0, done.stderr[-3000:]
    study = _study(proj.db("digits_sgd_pruning"))
    assert len(study.trials) == 8 and study.direction.name == "MAXIMIZE"
    for t in study.trials:
        assert t.state.name in ("COMPLETE", "PRUNED")
        assert t.state.name == "COMPLETE" or "pruner" in t.user_attrs["failure_reason"]
        assert len(t.intermediate_values) == (5 if t.state.name == "COMPLETE" else t.user_attrs["pruned_step"] + 1)
        assert ("model.l1_ratio" in t.params) == (t.params["model.penalty"] == "elasticnet")
        assert ("model.eta0" in t.params) == (t.params["model.learning_rate"] != "optimal")
