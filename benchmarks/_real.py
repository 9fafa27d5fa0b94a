"""Real training code for ``real_workloads.py``: what users run, shaped the way users write it.

The data is built at import time (module level), as in a typical training script; which
workload is set by ``HJ_REAL_WORKLOAD`` (``sklearn``, ``torch`` or ``numpy``) so that one run
imports only what it trains. Every call appends ``{"pid", "start", "seconds"}`` of its own
training work to the JSON-lines file ``HJ_REAL_TIMINGS`` (when set): the per-trial duration,
measured the same way in every framework.

* ``sklearn``: ``HistGradientBoostingClassifier`` (OpenMP), 20,000 x 40, 60 iterations.
* ``torch``: a CPU MLP (64 -> width -> width -> 1), 150 full-batch Adam steps on module-level tensors.
* ``numpy``: BLAS-bound ridge regressions (``X.T @ X`` and solves) on a module-level matrix.
* ``lightgbm`` / ``xgboost``: ``LGBMClassifier()`` / ``XGBClassifier()`` with their defaults (no
  ``n_jobs``: each library counts the cores itself) in a 5-fold ``cross_val_score`` on
  scikit-learn's breast_cancer, the way a user writes it. ``HJ_REAL_THREADS=1`` passes
  ``n_jobs=1`` to the model instead: the thread count pinned by hand.

Each row also records ``threads``: the OS threads of the process after the training work
(``/proc/self/task``), i.e. the pools the libraries really started, whatever they were asked.

The swept parameters (learning rates, regularisation) change the result, not the cost, so that
every framework does the same work whatever it samples.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

WORKLOAD = os.environ.get("HJ_REAL_WORKLOAD", "sklearn")

if WORKLOAD == "sklearn":
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = make_classification(n_samples=20_000, n_features=40, n_informative=20, random_state=0)
    X_train, X_val, y_train, y_val = X[:16_000], X[16_000:], y[:16_000], y[16_000:]
elif WORKLOAD == "torch":
    import torch

    torch.manual_seed(0)
    X_t = torch.randn(4096, 64)
    y_t = (X_t[:, :8].sum(dim=1, keepdim=True) > 0).float()
elif WORKLOAD == "numpy":
    import numpy as np

    rng = np.random.default_rng(0)
    X_np = rng.standard_normal((6000, 600))
    y_np = X_np @ rng.standard_normal(600) + rng.standard_normal(6000)
elif WORKLOAD in ("lightgbm", "xgboost"):
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import cross_val_score

    X_bc, y_bc = load_breast_cancer(return_X_y=True)
else:
    raise ValueError(f"HJ_REAL_WORKLOAD={WORKLOAD!r}: expected sklearn, torch, numpy, lightgbm or xgboost")
#: ``HJ_REAL_THREADS=N``: the boosting libraries get ``n_jobs=N`` (unset: their defaults).
PINNED = {"n_jobs": int(os.environ["HJ_REAL_THREADS"])} if os.environ.get("HJ_REAL_THREADS") else {}


def _sklearn(config: dict[str, Any]) -> float:
    model = HistGradientBoostingClassifier(
        max_iter=int(config.get("max_iter", 60)), learning_rate=float(config["lr"]),
        l2_regularization=float(config["l2"]), early_stopping=False, random_state=0,
    )
    model.fit(X_train, y_train)
    return 1.0 - float(model.score(X_val, y_val))


def _torch(config: dict[str, Any]) -> float:
    width = int(config.get("width", 128))
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, 1),
    )
    opt = torch.optim.Adam(model.parameters(), lr=float(config["lr"]), weight_decay=float(config["l2"]))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(int(config.get("steps", 150))):
        opt.zero_grad()
        loss = loss_fn(model(X_t), y_t)
        loss.backward()
        opt.step()
    return float(loss.item())


def _numpy(config: dict[str, Any]) -> float:
    gram = X_np.T @ X_np
    rhs = X_np.T @ y_np
    best = float("inf")
    for k in range(int(config.get("solves", 12))):
        alpha = float(config["l2"]) * (1 + k) * len(X_np)
        w = np.linalg.solve(gram + alpha * np.eye(gram.shape[0]), rhs)
        best = min(best, float(np.mean((X_np @ w - y_np) ** 2)))
        gram = gram + float(config["lr"]) * 1e-9 * (X_np.T @ X_np)
    return best


def _lightgbm(config: dict[str, Any]) -> float:
    from lightgbm import LGBMClassifier

    model = LGBMClassifier(learning_rate=float(config["lr"]), reg_lambda=float(config["l2"]), verbose=-1, **PINNED)
    return 1.0 - float(cross_val_score(model, X_bc, y_bc, cv=5, scoring="roc_auc").mean())


def _xgboost(config: dict[str, Any]) -> float:
    from xgboost import XGBClassifier

    model = XGBClassifier(learning_rate=float(config["lr"]), reg_lambda=float(config["l2"]), **PINNED)
    return 1.0 - float(cross_val_score(model, X_bc, y_bc, cv=5, scoring="roc_auc").mean())


def _threads() -> int:
    """The OS threads of this process now (0 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


WORKLOADS = {"sklearn": _sklearn, "torch": _torch, "numpy": _numpy, "lightgbm": _lightgbm, "xgboost": _xgboost}


def train(config: dict[str, Any]) -> float:
    """One trial of the configured workload; records how long its own work took."""
    start = time.perf_counter()
    wall = time.time()
    value = WORKLOADS[WORKLOAD](config)
    seconds = time.perf_counter() - start
    path = os.environ.get("HJ_REAL_TIMINGS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "start": wall, "seconds": seconds, "threads": _threads()}) + "\n")
    return value
