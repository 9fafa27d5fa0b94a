"""Identical launches of one seeded study (a SLURM array, two terminals) sample different
configurations (#19 item 1): real launches at once on one SQLite file, real Optuna."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import Project, child_env, search_config, trials


def test_four_identical_seeded_launches_at_once_sample_distinct_configurations(project: Project) -> None:
    """Four copies of the same command (seed 7, n_jobs 1, random sampler) started together:
    exactly n_trials COMPLETE and every configuration distinct (before: the copies shared one
    stream, 8 distinct of 16 with two launches); each launch recorded its own number."""
    project.write_config(search_config(n_jobs=1, n_trials=24, seed=7, sleep=0.2, sampler="{type: random}"))
    procs = [subprocess.Popen([sys.executable, str(project.script)], cwd=project.root, env=child_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    found = trials(project.db("exp_t"))
    assert [t["state"] for t in found] == ["COMPLETE"] * 24
    xs = [t["params"]["x"] for t in found]
    assert len(set(xs)) == 24, sorted(xs)
    assert len({t["system_attrs"]["hparam_joblib:owner"]["run"] for t in found}) >= 2


def test_one_seeded_launch_still_samples_what_optuna_would(project: Project) -> None:
    """The study's first launch with n_jobs 1 draws RandomSampler(seed)'s sequence, as before."""
    import optuna

    project.write_config(search_config(n_jobs=1, n_trials=6, seed=7, sampler="{type: random}"))
    done = project.run()
    assert done.returncode == 0, done.stderr[-2000:]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=6)
    assert [t["params"]["x"] for t in trials(project.db("exp_t"))] == [t.params["x"] for t in study.trials]
