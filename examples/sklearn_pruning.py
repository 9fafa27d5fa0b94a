"""Pruning a real search: SGDClassifier trained epoch by epoch on scikit-learn's digits dataset.

Each epoch calls ``report(validation accuracy, epoch)``; the median pruner (config
``sklearn_pruning.yaml``) stops trials whose curve falls below the median of earlier trials at
the same epoch. Run from the repository root (needs the ``examples`` extra: scikit-learn)::

    python examples/sklearn_pruning.py                 # 40 trials on 2 workers
    hparam-joblib status optuna_studies/digits_sgd_pruning.db

Conditional parameters: ``l1_ratio`` exists only for the elasticnet penalty, ``eta0`` only for
the learning-rate schedules that use it (not ``optimal``).
"""

from __future__ import annotations

import os

# One thread per trial: parallelism comes from n_jobs worker processes, not from BLAS/OpenMP.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import SGDClassifier  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from hparam_joblib import hparam_search, report  # noqa: E402


@hparam_search(config_path="sklearn_pruning.yaml", save_db_directory="./optuna_studies")
def train(config: dict) -> float:
    """Train for ``data.epochs`` epochs with partial_fit; return the final validation accuracy."""
    data = config["data"]
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=data["validation_fraction"], random_state=data["split_seed"], stratify=y
    )
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    model = SGDClassifier(random_state=0, **config["model"])
    classes = np.unique(y)
    rng = np.random.default_rng(data["split_seed"])
    accuracy = 0.0
    for epoch in range(data["epochs"]):
        order = rng.permutation(len(y_train))
        model.partial_fit(x_train[order], y_train[order], classes=classes)
        accuracy = float(model.score(x_val, y_val))
        report(accuracy, epoch)  # the pruner may end the trial here
    return accuracy


if __name__ == "__main__":
    train()
