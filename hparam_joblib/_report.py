"""``report()`` and ``current_trial_number()``: what a training function may call during a search.

Both talk to the trial's child-process context (``_trial_process.CURRENT``), which exists only in
the trial process while ``@hparam_search`` runs the training function. Outside a search (``train(config)``
called directly, ``python train.py --best``) they do nothing: ``report()`` returns, and
``current_trial_number()`` returns None, each after one debug log line.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Any

from hparam_joblib.runtime.trial import _trial_process

logger = logging.getLogger("hparam_joblib")
_SAID: set[str] = set()


def _context(name: str) -> _trial_process.TrialContext | None:
    ctx = _trial_process.CURRENT
    if ctx is None and name not in _SAID:
        _SAID.add(name)
        logger.debug("%s() called outside a search: ignored", name)
    return ctx


def report(value: float, step: int) -> None:
    """Report an intermediate value of the running trial (e.g. validation loss after an epoch).

    The value is recorded on the trial (``trial.report``) and the configured pruner decides
    whether the trial goes on. When it says stop, this call raises an exception that ends the
    trial as PRUNED (user attrs ``failure_reason`` "pruned by the pruner at step N" and
    ``pruned_step``). That exception is not an ``Exception``, so ``except Exception:`` in the
    training loop does not swallow it; even if some code does, the trial still ends PRUNED.

    Args:
        value: the intermediate objective value (a finite or NaN real number).
        step: the step it belongs to (an integer >= 0, e.g. the epoch).

    Outside a search (the function called directly, e.g. to retrain the best config) it does
    nothing.

    Raises:
        TypeError: ``value`` is not a real number or ``step`` is not an integer.
        ValueError: ``step`` is negative or ``value`` is infinite.
    """
    ctx = _context("report")
    if ctx is None:
        return
    number = _as_float(value)
    if math.isinf(number):
        raise ValueError(f"report(value, step): value must be finite, got {number}")
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"report(value, step): step must be an integer, got {step!r}")
    if step < 0:
        raise ValueError(f"report(value, step): step must be >= 0, got {step}")
    ctx.report(number, int(step))


def current_trial_number() -> int | None:
    """The number of the Optuna trial this training call belongs to.

    Returns:
        The trial number (0, 1, ... within the study), or None outside a search.
    """
    ctx = _context("current_trial_number")
    return None if ctx is None else ctx.trial_number


def _as_float(value: Any) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # 0-d arrays, tensors
        return _as_float(value.item())
    raise TypeError(f"report(value, step): value must be a real number, got {value!r}")
