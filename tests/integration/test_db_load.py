"""Load on a PostgreSQL server: a search sends no more statements and round trips per trial than
Optuna's own multi-process recipe does for the same objective (``benchmarks/db_load.py``, whose
proxy counts what every process sends on the wire, at n_jobs 1 where the counts are exact).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "db_load.py"


def _db_load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hj_db_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_statements_and_round_trips_per_trial_at_most_optunas_recipe(postgres_server: str, tmp_path: Path) -> None:
    db_load = _db_load()
    host, port, _ = db_load._host_port(postgres_server)
    proxy = db_load.Proxy(host, port)
    proj = db_load._project(tmp_path)
    per_trial = {}
    for framework in ("hparam_joblib", "optuna_recipe"):
        small = db_load.run_point(proxy, postgres_server, proj, framework, 1, 12, 0)
        large = db_load.run_point(proxy, postgres_server, proj, framework, 1, 36, 0)
        assert small["finished"] == {"COMPLETE": 12} and large["finished"] == {"COMPLETE": 36}
        per_trial[framework] = db_load.derive(small, large)
    ours, recipe = per_trial["hparam_joblib"], per_trial["optuna_recipe"]
    assert recipe["statements_per_trial"] > 20  # the proxy saw the recipe's work
    for key in ("statements_per_trial", "round_trips_per_trial", "commits_per_trial"):
        assert ours[key] <= recipe[key], (key, ours, recipe)
