"""Issue 23 items 3 and 8, as a user runs them: a misspelt setting in the YAML stops the script
(exit 2, one line, nothing created) unless ``not_settings`` lists it; ``--set pruner.type=none``
and friends switch the sampler or pruner cleanly."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Project, search_config, states

#: The pruner the file asks for: settings that only some pruner types take.
MEDIAN = "{type: median, n_startup_trials: 5, n_warmup_steps: 2}"


@pytest.mark.parametrize(
    ("extra", "key", "meant", "what"),
    [
        ("direciton: maximize", "direciton", "direction", "direction would keep its default"),
        ("n_trial: 40", "n_trial", "n_trials", "n_trials would keep its default"),
        ("Trial_Timeout: 5", "Trial_Timeout", "trial_timeout", "trial_timeout would keep its default"),
    ],
)
def test_a_misspelt_setting_stops_the_script(project: Project, extra: str, key: str, meant: str, what: str) -> None:
    """Exit 2, exactly one stderr line naming the file, the key, the fix and the escape; no file."""
    project.write_config(search_config(n_trials=3, direction=None) + extra + "\n")
    before = project.snapshot()
    done = project.run()
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        (f"error: config/config.yaml: {key}: not a setting, so it would reach your function as a fixed "
        f"parameter and {what}; did you mean {meant!r}? If {key} is for your function, list it: "
        f"not_settings: [{key}]")
    ]
    assert project.snapshot() == before and not (project.root / "optuna_studies").exists()


def test_a_misspelt_sweep_parameters_stops_the_script(project: Project) -> None:
    """``sweep_parameter:`` would have run n_trials identical trials."""
    text = search_config(n_trials=40).replace("sweep_parameters:", "sweep_parameter:")
    project.write_config(text)
    before = project.snapshot()
    done = project.run()
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        ("error: config/config.yaml: sweep_parameter: not a setting, so it would reach your function as a "
        "fixed parameter and nothing would be searched; did you mean 'sweep_parameters'? If sweep_parameter "
        "is for your function, list it: not_settings: [sweep_parameter]")
    ]
    assert project.snapshot() == before and not (project.root / "optuna_studies").exists()


def test_a_listed_key_reaches_the_function(project: Project) -> None:
    """``not_settings: [samples]``: the search runs and every trial's config has ``samples``."""
    record = project.root / "configs.jsonl"
    project.write_config(search_config(n_trials=2, n_jobs=1, samples=1000, not_settings="[samples]",
                                       record=str(record)))
    done = project.run()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "samples" not in done.stderr and "did you mean" not in done.stderr
    assert states(project.db("exp_t")) == {"COMPLETE": 2}
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert [c["samples"] for c in seen] == [1000, 1000] and all("not_settings" not in c for c in seen)


def test_set_pruner_type_none_turns_the_pruner_off(project: Project) -> None:
    """``--set pruner.type=none`` on a median pruner with its settings: runs, one note, the study
    holds the trials; the same setting given for the wrong type is an error that says how to switch."""
    project.write_config(search_config(n_trials=2, n_jobs=1, pruner=MEDIAN))
    done = project.run("--set", "pruner.type=none")
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("hparam_joblib: note: --set pruner.type=none: dropped pruner.n_startup_trials, pruner.n_warmup_steps "
            "(settings of the median pruner that the none pruner does not take)") in done.stderr.splitlines()
    assert states(project.db("exp_t")) == {"COMPLETE": 2}

    wrong = project.run("--set", "pruner.type=none", "pruner.n_warmup_steps=3")
    assert wrong.returncode == 2
    assert wrong.stderr.splitlines() == [
        ("error: config/config.yaml (with --set 'pruner.n_warmup_steps=3'): pruner.n_warmup_steps: unknown "
        "setting for the none pruner; valid: none (n_warmup_steps is a setting of the median / percentile / "
        "threshold pruner). To switch the pruner, give only its type: pruner: none in the file, or --set "
        "pruner.type=none (which drops the old type's settings)")
    ]
    assert states(project.db("exp_t")) == {"COMPLETE": 2}  # nothing ran


@pytest.mark.parametrize(
    ("setting", "item", "shown"),
    [
        (("pruner", MEDIAN), "pruner=none", "# pruner:  none"),
        (("pruner", MEDIAN), "pruner=null", "# pruner:  none"),
        (("pruner", "median"), "pruner.type=none", "# pruner:  none"),
        (("sampler", "{type: tpe, multivariate: true}"), "sampler.type=random", "# sampler: random"),
        (("sampler", "tpe"), "sampler.type=random", "# sampler: random"),
        (("sampler", "{type: random}"), "sampler=tpe", "# sampler: tpe (n_startup_trials=5)"),
    ],
)
def test_set_switches_in_a_dry_run(project: Project, setting: tuple[str, str], item: str, shown: str) -> None:
    """Each form of switching gives the new type, with nothing of the old one, exit 0."""
    project.write_config(search_config(n_trials=2, **{setting[0]: setting[1]}))
    done = project.run("--dry-run", "--set", item)
    assert done.returncode == 0, done.stderr
    assert shown in done.stdout.splitlines(), done.stdout
    assert not (project.root / "optuna_studies").exists()
