"""A real search: HistGradientBoostingClassifier on scikit-learn's bundled digits dataset.

Run from the repository root (needs the ``examples`` extra: scikit-learn)::

    python examples/sklearn_digits.py                      # 30 trials on 2 workers
    python examples/sklearn_digits.py --set n_trials=60    # 30 more, same study

The training function is plain scikit-learn; the decorator reads config/sklearn_digits.yaml.
"""

from __future__ import annotations

import os

# One thread per trial: parallelism comes from n_jobs worker processes, not from BLAS/OpenMP.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402

from hparam_joblib import hparam_search  # noqa: E402


@hparam_search(config_path="sklearn_digits.yaml", save_db_directory="./optuna_studies")
def train(config: dict) -> float:
    """Return the mean cross-validated accuracy of one hyperparameter setting."""
    x, y = load_digits(return_X_y=True)
    model = HistGradientBoostingClassifier(random_state=0, **config["model"])
    scores = cross_val_score(model, x, y, cv=config["data"]["cv_folds"], n_jobs=1)
    return float(scores.mean())


if __name__ == "__main__":
    train()
