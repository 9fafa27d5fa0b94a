"""One measured run, in a fresh Python process so that start-up is part of what is measured.

Usage (by the benchmark scripts, not by hand): ``python benchmarks/_run_one.py '<json spec>'``.
Prints one line ``@@RESULT {json}`` on stdout. Spec keys:

* ``framework``: ``hparam_joblib``; ``optuna_threads`` (``study.optimize(n_jobs=k)``);
  ``optuna_procs`` (k forked processes, each ``study.optimize`` on the same SQLite URL: Optuna's
  recipe); ``optuna_journal`` (the same recipe on one ``JournalFileBackend`` file next to
  ``db``); ``optuna_seq`` (one ``study.optimize`` loop, n_jobs=1); ``joblib``
  (``joblib.Parallel(n_jobs=k)`` of the same function over pre-sampled random configs: no
  storage, no sampler; the floor).
* ``config``: the YAML file (search space, seed, fixed keys); ``set``: ``{key: value}`` overrides.
* ``n_jobs``, ``n_trials`` (for hparam_joblib the study's total budget; for the peers the trials
  to run in this call), ``db`` (SQLite file; ``null`` with ``storage: memory``).
* ``sampler`` (peers only): ``tpe`` (Optuna's default ``TPESampler``, with the YAML's
  ``n_startup_trials``) or ``random``; ``time_sampler``: time every sampler call per trial.

The peers use Optuna's defaults for storage (``RDBStorage`` from the URL: no WAL, SQLite's 5 s
busy timeout, no retries beyond Optuna's own) and log at WARNING like hparam_joblib's workers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

T_ENTER = time.time()  # before the heavy imports: the process is already running

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _workloads
import yaml

STAMP = "%Y-%m-%d %H:%M:%S.%f"  # how Optuna's RDBStorage stores datetimes in SQLite


def read_trials(db: str) -> list[dict[str, Any]]:
    """Every trial of the (single) study in ``db``: number, state, start and completion time."""
    conn = sqlite3.connect(db, timeout=60)
    try:
        rows = conn.execute(
            "SELECT number, state, datetime_start, datetime_complete FROM trials ORDER BY number"
        ).fetchall()
    finally:
        conn.close()

    def ts(text: str | None) -> float | None:
        return None if text is None else datetime.fromisoformat(str(text)).timestamp()

    return [{"number": n, "state": s, "start": ts(a), "complete": ts(b)} for n, s, a, b in rows]


def study_trials(study: Any) -> list[dict[str, Any]]:
    """``read_trials``'s rows, from a study object (in-memory or journal storage: no SQLite file)."""
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "start": t.datetime_start.timestamp() if t.datetime_start else None,
            "complete": t.datetime_complete.timestamp() if t.datetime_complete else None,
        }
        for t in study.get_trials(deepcopy=False)
    ]


def load_yaml_config(path: str, overrides: dict[str, Any]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    raw.update(overrides)
    return raw


# -- hparam_joblib -----------------------------------------------------------------------------
def run_hparam_joblib(spec: dict[str, Any]) -> dict[str, Any]:
    import cloudpickle

    from hparam_joblib import hparam_search

    cloudpickle.register_pickle_by_value(_workloads)
    db = Path(spec["db"])
    overrides = dict(spec.get("set", {}))
    raw = load_yaml_config(spec["config"], overrides)
    tag = db.stem[len(str(raw["experiment_name"])) + 1 :]
    train = hparam_search(config_path=spec["config"], save_db_directory=str(db.parent))(_workloads.train)
    sets = [f"n_jobs={spec['n_jobs']}", f"n_trials={spec['n_trials']}", f"tag={tag}"]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    if spec.get("prefill"):
        prefill_db(str(db), db.stem, raw, int(spec["prefill"]), hj_attrs=True)
    t_start = time.time()
    result = train(argv=["--config", spec["config"], "--set", *sets])
    t_done = time.time()
    assert result is not None
    if Path(result.db_path) != db.resolve():
        raise RuntimeError(f"hparam_joblib wrote {result.db_path}, expected {db}")
    import hparam_joblib

    return {
        "package": str(Path(hparam_joblib.__file__).parent),
        "t_start": t_start,
        "t_done": t_done,
        "wall_time": result.wall_time,
        "counts": result.counts,
        "lock_retries": result.lock_retries,
        "storage_ops": result.storage_ops,
        "n_finished": result.n_finished,
        "trials_run": result.trials_run,
        "n_worker_pids": len(result.worker_pids),
        "errors": [],
    }


# -- plain Optuna peers ------------------------------------------------------------------------
def _space(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from hparam_joblib.config._schema import STUDY_KEYS  # the package's own rule for fixed parameters

    fixed = {k: v for k, v in raw.items() if k not in STUDY_KEYS}
    return fixed, dict(raw.get("sweep_parameters") or {})


def _make_objective(raw: dict[str, Any]) -> Any:
    fixed, params = _space(raw)

    def objective(trial: Any) -> float:
        config = dict(fixed)
        for name, p in params.items():
            if p["type"] == "float":
                config[name] = trial.suggest_float(
                    name, float(p["low"]), float(p["high"]), log=bool(p.get("log", False))
                )
            elif p["type"] == "int":
                config[name] = trial.suggest_int(
                    name, int(p["low"]), int(p["high"]), log=bool(p.get("log", False))
                )
            else:
                config[name] = trial.suggest_categorical(name, list(p["choices"]))
        return _workloads.train(config)

    return objective


class _SamplerClock:
    """Wraps a sampler's methods and adds their time to the trial they were called for."""

    METHODS = (
        "infer_relative_search_space",
        "sample_relative",
        "sample_independent",
        "before_trial",
        "after_trial",
    )

    def __init__(self, sampler: Any) -> None:
        self.per_trial: dict[int, float] = {}
        for name in self.METHODS:
            setattr(sampler, name, self._wrap(getattr(sampler, name)))

    def _wrap(self, method: Any) -> Any:
        def timed(study: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(study, trial, *args, **kwargs)
            finally:
                self.per_trial[trial.number] = (
                    self.per_trial.get(trial.number, 0.0) + time.perf_counter() - start
                )

        return timed


def _sampler(spec: dict[str, Any], raw: dict[str, Any], offset: int = 0) -> Any:
    import optuna

    seed = raw.get("seed")
    seed = None if seed is None else int(seed) + offset
    if spec.get("sampler", "tpe") == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=int(raw.get("n_startup_trials", 10)), seed=seed)


def _study_name(spec: dict[str, Any], raw: dict[str, Any]) -> str:
    if spec.get("db"):
        return Path(spec["db"]).stem
    return f"{raw['experiment_name']}_{raw.get('tag', 'x')}"


def run_optuna_in_process(spec: dict[str, Any]) -> dict[str, Any]:
    """``optuna_seq`` and ``optuna_threads``: one process, ``study.optimize(n_jobs=k)``.

    ``phases`` (optional): ``[{"sampler": ..., "n_trials": ..., "time_sampler": ...}, ...]`` run
    one after the other on the same study (used by overhead.py: random, then TPE).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = load_yaml_config(spec["config"], dict(spec.get("set", {})))
    storage = None if spec.get("storage") == "memory" else f"sqlite:///{Path(spec['db']).resolve()}"
    phases = spec.get("phases") or [
        {
            "sampler": spec.get("sampler", "tpe"),
            "n_trials": spec["n_trials"],
            "time_sampler": spec.get("time_sampler"),
        }
    ]
    if storage is not None and spec.get("prefill"):
        prefill_db(spec["db"], _study_name(spec, raw), raw, int(spec["prefill"]), hj_attrs=False)
    t_start = time.time()
    errors: list[str] = []
    study = optuna.create_study(
        storage=storage,
        study_name=_study_name(spec, raw),
        sampler=_sampler(phases[0], raw),
        direction=raw.get("direction", "minimize"),
        load_if_exists=True,
    )
    if storage is None and spec.get("prefill"):
        study.add_trials(_random_trials(raw, int(spec["prefill"])))
    t_prefilled = time.time()
    phase_first: list[int] = []
    sampler_s: dict[str, float] = {}
    for phase in phases:
        study.sampler = _sampler(phase, raw)
        clock = _SamplerClock(study.sampler) if phase.get("time_sampler") else None
        phase_first.append(len(study.get_trials(deepcopy=False)))
        try:
            study.optimize(_make_objective(raw), n_trials=int(phase["n_trials"]), n_jobs=int(spec["n_jobs"]))
        except Exception as err:  # noqa: BLE001 - a lost run is what we count
            errors.append(f"{type(err).__name__}: {str(err)[:200]}")
        if clock is not None:
            sampler_s.update({str(k): v for k, v in clock.per_trial.items()})
    t_done = time.time()
    out: dict[str, Any] = {
        "t_start": t_start,
        "t_done": t_done,
        "t_prefilled": t_prefilled,
        "errors": errors,
        "phase_first": phase_first,
    }
    if storage is None:
        out["trials"] = study_trials(study)
    if sampler_s:
        out["sampler_s"] = sampler_s
    return out


def _random_trials(raw: dict[str, Any], n: int) -> list[Any]:
    """``n`` finished trials with random parameters (zero-work objective), for in-memory prefill."""
    import random

    import optuna

    fixed, params = _space(raw)
    rng = random.Random(12345)
    dists = {
        name: optuna.distributions.FloatDistribution(float(p["low"]), float(p["high"]))
        for name, p in params.items()
    }
    trials = []
    for _ in range(n):
        values = {name: rng.uniform(d.low, d.high) for name, d in dists.items()}
        trials.append(
            optuna.trial.create_trial(
                params=values,
                distributions=dists,
                value=_workloads.train({**fixed, **values, "workload": "zero"}),
            )
        )
    return trials


def prefill_db(db: str, study_name: str, raw: dict[str, Any], n: int, *, hj_attrs: bool) -> None:
    """Create the study and ``n`` COMPLETE trials in bulk (one transaction), so that a study of a
    given size exists in seconds. Rows as Optuna writes them; with ``hj_attrs`` also the
    ``config`` user attribute and owner system attribute that hparam_joblib stores per trial.
    """
    import random
    from datetime import timedelta

    import optuna

    study = optuna.create_study(
        storage=f"sqlite:///{Path(db).resolve()}",
        study_name=study_name,
        direction=raw.get("direction", "minimize"),
    )
    backend = getattr(study._storage, "_backend", study._storage)
    backend.remove_session()
    backend.engine.dispose()
    fixed, params = _space(raw)
    rng = random.Random(12345)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        study_id = conn.execute(
            "SELECT study_id FROM studies WHERE study_name = ?", (study_name,)
        ).fetchone()[0]
        conn.execute("BEGIN")
        t0 = datetime.now() - timedelta(seconds=n)
        for number in range(n):
            start = t0 + timedelta(seconds=number)
            cur = conn.execute(
                "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) VALUES (?, ?, ?, ?, ?)",
                (
                    number,
                    study_id,
                    "COMPLETE",
                    start.strftime(STAMP),
                    (start + timedelta(milliseconds=5)).strftime(STAMP),
                ),
            )
            trial_id = cur.lastrowid
            values = {}
            for name, p in params.items():
                values[name] = rng.uniform(float(p["low"]), float(p["high"]))
                dist = {
                    "name": "FloatDistribution",
                    "attributes": {
                        "step": None,
                        "low": float(p["low"]),
                        "high": float(p["high"]),
                        "log": False,
                    },
                }
                conn.execute(
                    "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES (?, ?, ?, ?)",
                    (trial_id, name, values[name], json.dumps(dist)),
                )
            config = {**fixed, **values}
            conn.execute(
                "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (?, 0, ?, 'FINITE')",
                (trial_id, _workloads.train({**config, "workload": "zero"})),
            )
            if hj_attrs:
                conn.execute(
                    'INSERT INTO trial_user_attributes (trial_id, "key", value_json) VALUES (?, ?, ?)',
                    (trial_id, "config", json.dumps(config)),
                )
                owner = {"host": "prefill", "pid": 1, "start": "0", "run": "prefill"}
                conn.execute(
                    'INSERT INTO trial_system_attributes (trial_id, "key", value_json) VALUES (?, ?, ?)',
                    (trial_id, "hparam_joblib:owner", json.dumps(owner)),
                )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _recipe_storage(spec: dict[str, Any]) -> Any:
    """The recipe's storage: the SQLite URL (Optuna's defaults), or a JournalFileBackend file."""
    if spec["framework"] == "optuna_journal":
        import optuna
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(_journal_path(spec)))
    return f"sqlite:///{Path(spec['db']).resolve()}"


def _journal_path(spec: dict[str, Any]) -> str:
    return str(Path(spec["db"]).with_suffix(".journal"))


def _proc_main(spec: dict[str, Any], raw: dict[str, Any], index: int, n_trials: int, queue: Any) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(
            study_name=_study_name(spec, raw), storage=_recipe_storage(spec), sampler=_sampler(spec, raw, index)
        )
        study.optimize(_make_objective(raw), n_trials=n_trials)
    except Exception as err:  # noqa: BLE001 - the recipe has no retry: this process's trials are lost
        queue.put(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
        os._exit(1)
    queue.put("")
    os._exit(0)


def run_optuna_procs(spec: dict[str, Any]) -> dict[str, Any]:
    """Optuna's recipe: k processes, each ``load_study`` + ``optimize(n_trials // k)``."""
    import multiprocessing

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = load_yaml_config(spec["config"], dict(spec.get("set", {})))
    t_start = time.time()
    study = optuna.create_study(
        storage=_recipe_storage(spec),
        study_name=_study_name(spec, raw),
        direction=raw.get("direction", "minimize"),
        load_if_exists=True,
    )
    if spec["framework"] == "optuna_procs":
        # No open SQLite connection may cross fork(): close the pool before starting the children.
        backend = getattr(study._storage, "_backend", study._storage)
        backend.remove_session()
        backend.engine.dispose()
        del backend
    del study
    k = int(spec["n_jobs"])
    total = int(spec["n_trials"])
    shares = [total // k + (1 if i < total % k else 0) for i in range(k)]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.SimpleQueue()
    procs = [
        ctx.Process(target=_proc_main, args=(spec, raw, i, shares[i], queue)) for i in range(k) if shares[i]
    ]
    for p in procs:
        p.start()
    errors = []
    for _ in procs:
        message = queue.get()
        if message:
            errors.append(message)
    for p in procs:
        p.join()
    t_done = time.time()
    out: dict[str, Any] = {
        "t_start": t_start,
        "t_done": t_done,
        "errors": errors,
        "exit_codes": sorted({p.exitcode for p in procs}),
    }
    if spec["framework"] == "optuna_journal":
        study = optuna.load_study(study_name=_study_name(spec, raw), storage=_recipe_storage(spec))
        out["trials"] = study_trials(study)
        Path(_journal_path(spec)).unlink(missing_ok=True)
    return out


def _timed_train(number: int, config: dict[str, Any]) -> dict[str, Any]:
    start = time.time()
    _workloads.train(config)
    return {"number": number, "state": "COMPLETE", "start": start, "complete": time.time()}


def run_joblib(spec: dict[str, Any]) -> dict[str, Any]:
    """The floor: ``joblib.Parallel`` of the same function over random configs (no storage)."""
    import random

    import cloudpickle
    from joblib import Parallel, delayed

    cloudpickle.register_pickle_by_value(_workloads)
    raw = load_yaml_config(spec["config"], dict(spec.get("set", {})))
    fixed, params = _space(raw)
    rng = random.Random(raw.get("seed"))
    t_start = time.time()
    configs = []
    for _ in range(int(spec["n_trials"])):
        config = dict(fixed)
        for name, p in params.items():
            if p["type"] == "float":
                config[name] = rng.uniform(float(p["low"]), float(p["high"]))
            elif p["type"] == "int":
                config[name] = rng.randint(int(p["low"]), int(p["high"]))
            else:
                config[name] = rng.choice(list(p["choices"]))
        configs.append(config)
    trials = Parallel(n_jobs=int(spec["n_jobs"]))(delayed(_timed_train)(i, c) for i, c in enumerate(configs))
    return {"t_start": t_start, "t_done": time.time(), "errors": [], "trials": trials}


def main() -> None:
    spec = json.loads(sys.argv[1])
    runners = {
        "hparam_joblib": run_hparam_joblib,
        "optuna_threads": run_optuna_in_process,
        "optuna_seq": run_optuna_in_process,
        "optuna_procs": run_optuna_procs,
        "optuna_journal": run_optuna_procs,
        "joblib": run_joblib,
    }
    out = runners[spec["framework"]](spec)
    out["t_enter"] = T_ENTER
    if spec.get("db") and "trials" not in out:
        out["trials"] = read_trials(spec["db"])
    sys.stdout.flush()
    print("@@RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
