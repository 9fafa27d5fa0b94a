"""Bad input: one line naming the file and key, exit status 2, no traceback, nothing on disk."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import X_SWEEP, Project, search_config, unprivileged_prefix

#: A valid config; each bad case changes one thing in it.
GOOD = search_config(n_trials=3, direction=None, n_startup_trials=None,
                     sweep=X_SWEEP + "  c: {type: categorical, choices: [a, b]}\n")


def _variant(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


CASES = [
    # id, config text (None: keep GOOD), extra args, substrings expected on the error line
    ("missing-config", None, ["--config", "nope.yaml"], ["nope.yaml", "not found", "config/nope.yaml"]),
    ("yaml-syntax", "a: [1, 2\nb: 3\n", [], ["config.yaml", "line", "column"]),
    ("top-level-list", "- 1\n- 2\n", [], ["config.yaml", "mapping"]),
    ("no-type", _variant("{type: float, low: 0.0, high: 1.0}", "{low: 0.0, high: 1.0}"), [],
     ["config.yaml", "sweep_parameters.x.type"]),
    ("unknown-type", _variant("type: float", "type: double"), [],
     ["config.yaml", "sweep_parameters.x.type", "double"]),
    ("low-ge-high", _variant("low: 0.0, high: 1.0", "low: 2.0, high: 1.0"), [],
     ["config.yaml", "sweep_parameters.x.high", "must be > low"]),
    ("log-low-le-0", _variant("high: 1.0}", "high: 1.0, log: true}"), [],
     ["config.yaml", "sweep_parameters.x.low", "log"]),
    ("step-le-0", _variant("high: 1.0}", "high: 1.0, step: 0}"), [],
     ["config.yaml", "sweep_parameters.x.step"]),
    ("empty-choices", _variant("choices: [a, b]", "choices: []"), [],
     ["config.yaml", "sweep_parameters.c.choices"]),
    ("dup-choices", _variant("choices: [a, b]", "choices: [a, a]"), [],
     ["config.yaml", "sweep_parameters.c.choices", "duplicate"]),
    ("bound-not-number", _variant("low: 0.0", "low: zero"), [],
     ["config.yaml", "sweep_parameters.x.low", "number"]),
    ("n_jobs-0", _variant("n_jobs: 2", "n_jobs: 0"), [], ["config.yaml", "n_jobs"]),
    ("n_jobs-str", _variant("n_jobs: 2", "n_jobs: many"), [], ["config.yaml", "n_jobs"]),
    ("n_trials-0", _variant("n_trials: 3", "n_trials: 0"), [], ["config.yaml", "n_trials"]),
    ("n_trials-set-ten", None, ["--set", "n_trials=ten"], ["config.yaml", "n_trials=ten", "n_trials"]),
    ("direction", _variant("n_jobs: 2", "n_jobs: 2\ndirection: upward"), [],
     ["config.yaml", "direction", "minimize"]),
    ("set-no-equals", None, ["--set", "n_trials"], ["--set", "n_trials", "key=value"]),
    ("set-empty-key", None, ["--set", "=3"], ["--set", "=3", "empty"]),
    ("unknown-flag", None, ["--frobnicate"], ["--frobnicate"]),
    ("name-escapes", _variant("experiment_name: exp", "experiment_name: ../evil"), [],
     ["config.yaml", "experiment_name", "leave"]),
    ("tag-escapes", None, ["--set", "tag=a/b"], ["config.yaml", "tag", "leave"]),
    ("python-tag", "experiment_name: !!python/object/apply:os.system ['touch PWNED']\nn_trials: 3\n", [],
     ["config.yaml", "python"]),
]


@pytest.mark.parametrize("config, args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(
    project: Project, config: str | None, args: list[str], expected: list[str]
) -> None:
    """Every kind of bad input: exit 2, one 'error:' line naming file and key, no traceback."""
    project.write_config(config if config is not None else GOOD)
    before = project.snapshot()
    done = project.run(*args)
    _assert_one_line_error(done, expected)
    assert project.snapshot() == before
    assert not (project.root / "optuna_studies").exists()
    assert not (project.root / "PWNED").exists()


def _assert_one_line_error(done: subprocess.CompletedProcess[str], expected: list[str]) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in errors[0], (text, errors[0])


def test_save_directory_blocked_by_a_file(project: Project) -> None:
    """A file where the save directory should be: one-line error, nothing changed."""
    project.write_config(GOOD)
    (project.root / "optuna_studies").write_text("not a directory")
    before = project.snapshot()
    done = project.run()
    _assert_one_line_error(done, ["optuna_studies", "not a directory"])
    assert project.snapshot() == before


def test_unwritable_save_directory(user_project: Project) -> None:
    """A save directory without write permission: one-line error, nothing created. The script
    runs as an ordinary user (root, as in CI, may write into any directory)."""
    project = user_project
    project.write_config(GOOD)
    (project.root / "optuna_studies").mkdir()
    as_user = unprivileged_prefix(project)  # the project becomes that user's
    os.chmod(project.root / "optuna_studies", 0o555)
    try:
        done = project.run(prefix=as_user)
        _assert_one_line_error(done, ["optuna_studies", "not writable"])
        assert list((project.root / "optuna_studies").iterdir()) == []
    finally:
        os.chmod(project.root / "optuna_studies", 0o755)


def test_existing_file_that_is_not_sqlite(project: Project) -> None:
    """A .db file that is not SQLite is refused and left exactly as it was."""
    project.write_config(GOOD)
    (project.root / "optuna_studies").mkdir()
    (project.root / "optuna_studies" / "exp_t.db").write_text("my notes, not a database\n")
    before = project.snapshot()
    done = project.run()
    _assert_one_line_error(done, ["exp_t.db", "not a SQLite database"])
    assert project.snapshot() == before


@pytest.mark.slow
def test_resume_with_another_direction_is_refused(project: Project) -> None:
    """Resuming a minimize study with direction maximize: refused, DB unchanged."""
    project.write_config(GOOD)
    assert project.run().returncode == 0
    before = project.snapshot()
    done = project.run("--set", "direction=maximize", "n_trials=5")
    _assert_one_line_error(done, ["exp_t.db", "minimize", "maximize"])
    assert project.snapshot() == before


@pytest.mark.parametrize("signature", ["def train():", "def train(config, extra):"])
def test_training_function_must_take_one_argument(project: Project, signature: str) -> None:
    """A training function with the wrong arity is a one-line error before anything starts."""
    project.write_config(GOOD)
    project.script.write_text(
        "from hparam_joblib import hparam_search\n"
        "@hparam_search(config_path='config.yaml')\n"
        f"{signature}\n    return 0.0\n"
        "if __name__ == '__main__':\n    train()\n"
    )
    before = project.snapshot()
    done = project.run()
    _assert_one_line_error(done, ["config.yaml", "train()", "one argument"])
    assert project.snapshot() == before
