"""``python train.py --best``: run the training function once, in this process, on the best
trial's config (read from the study the YAML file names), and print the value it returns.

The function runs outside a search, so ``report()`` does nothing and ``current_trial_number()``
is None; nothing is written to the study.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hparam_joblib._errors import StorageError, UsageError
from hparam_joblib.config._overrides import SWEEP_KEY, Override, apply_overrides
from hparam_joblib.config._schema import RESERVED_KEYS, SearchConfig

logger = logging.getLogger("hparam_joblib")


def best_config(cfg: SearchConfig, save_dir: Path) -> tuple[dict[str, Any], int, float, str]:
    """The best trial's config of ``cfg``'s study.

    Returns:
        The config its function received, the trial number, its value, and where the study is.

    Raises:
        StorageError: no database or no such study yet.
        UsageError: no completed trial, or several objectives (no single best trial).
    """
    from hparam_joblib.results._read import require_best, snapshot, trial_config
    from hparam_joblib.storage import load_study, location_for, open_database

    location = location_for(cfg, save_dir)
    if location.kind == "sqlite" and not Path(location.path).exists():
        raise StorageError(location.path, f"no study database yet: run the search first (python {_script()})")
    db = open_database(location)
    if cfg.study_name not in db.studies:
        raise StorageError(db.shown, f"holds no study {cfg.study_name!r} yet; studies: {', '.join(db.studies)}")
    with contextlib.ExitStack() as resources:
        data = snapshot(load_study(db, cfg.study_name, resources))
    if data.multi_objective:
        raise UsageError(
            f"--best: study {cfg.study_name} has {len(data.directions)} objectives, so no single best "
            f"trial; pick one from the Pareto front: hparam-joblib best {db.shown}"
        )
    require_best(data)
    trial = data.best[0]
    config, _ = trial_config(data, trial)
    return config, trial.number, float(trial.value), db.shown  # type: ignore[arg-type]


def retrain(
    func: Callable[[dict[str, Any]], Any], cfg: SearchConfig, save_dir: Path, overrides: list[Override]
) -> Any:
    """Run ``func`` once on the best config (``--set`` values of fixed parameters on top); print
    what it returns on stdout, and return it."""
    config, number, value, shown = best_config(cfg, save_dir)
    extra = [o for o in overrides if o.path[0] not in RESERVED_KEYS and o.path[0] != SWEEP_KEY]
    if extra:
        config, _ = apply_overrides(config, extra)
    print(
        f"hparam_joblib: retraining trial {number} of study {cfg.study_name} (value {value:.6g}) "
        f"in this process, from {shown}" + (f", with {' '.join(o.text for o in extra)}" if extra else ""),
        file=sys.stderr, flush=True,
    )
    result = func(config)
    print(f"value: {result}" if not isinstance(result, float) else f"value: {result:.6g}")
    return result


def _script() -> str:
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "train.py"
