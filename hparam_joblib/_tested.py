"""The versions our private paths were tested on, in one place, and what each path does outside them.

The exact budget and a study file that plain Optuna reads rest on Optuna internals (the rows our
storage writes in SQLAlchemy Core, the private methods Optuna's cache calls, the journal records
we append); the preloaded worker server copies a private part of ``multiprocessing``. A release
may move any of them, so each path decides, by the table below, whether it runs:

* **Optuna, SQLAlchemy** outside the range: the search refuses to start, one line naming the
  installed and the tested versions (exit status 2), before anything is created. There is no
  public-API path with the same guarantees: ``BaseStorage`` has no multi-row transaction, so a
  budget counted and taken in one step, a trial's owner and a final state with its reason all
  need the internals. ``HPARAM_JOBLIB_ALLOW_UNTESTED=1`` runs anyway (CI does, on the newest
  releases), still behind the call-path guard (``storage/_guard``) and the worker's check that
  every trial it runs was created by the budgeted path, which stop the search rather than let a
  budget go silently.
* **Python** outside the range: the workers start as loky's own fresh interpreters (public
  API; ~0.7 CPU-s of imports each) instead of forks of the preloaded server, whose start-up
  copies ``multiprocessing`` internals that 3.14 changed (the forkserver authenticates its
  socket). Everything else uses the standard library's public API.

``pyproject.toml`` pins the same ranges, so pip installs only tested releases (a test checks that
the two agree); the range is widened after CI's newest-release step passes on the new release.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys

from hparam_joblib._errors import UpgradeError

logger = logging.getLogger("hparam_joblib")

#: Package -> (oldest, newest) ``major.minor`` tested, both included.
TESTED: dict[str, tuple[str, str]] = {
    "python": ("3.10", "3.13"),
    "optuna": ("5.0", "5.1"),
    "sqlalchemy": ("2.0", "2.1"),
}
#: The packages whose range is enforced by refusing (their internals carry the budget).
REFUSED_OUTSIDE: tuple[str, ...] = ("optuna", "sqlalchemy")
#: Set to ``1`` to run with an Optuna or SQLAlchemy outside the tested range (the guards stay on).
ALLOW_ENV = "HPARAM_JOBLIB_ALLOW_UNTESTED"


def _minor(version: str) -> tuple[int, int]:
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def installed(name: str) -> str:
    """The installed version of ``name`` (``python`` for the interpreter)."""
    if name == "python":
        return ".".join(str(n) for n in sys.version_info[:3])
    return importlib.metadata.version(name)


def inside(name: str, version: str) -> bool:
    """Is ``version`` of ``name`` within the tested range (by major.minor)?"""
    low, high = TESTED[name]
    return _minor(low) <= _minor(version) <= _minor(high)


def python_tested() -> bool:
    """Is this interpreter inside the tested range? (Outside: no preloaded worker server.)"""
    return inside("python", installed("python"))


def describe(name: str) -> str:
    low, high = TESTED[name]
    return f"{name} {low}-{high}" if low != high else f"{name} {low}"


def require_tested() -> None:
    """Refuse an Optuna or SQLAlchemy outside :data:`TESTED` (one line), unless
    ``HPARAM_JOBLIB_ALLOW_UNTESTED=1``, which logs one warning line instead.

    Raises:
        UpgradeError: a package outside its range, and no override.
    """
    outside = [(name, installed(name)) for name in REFUSED_OUTSIDE if not inside(name, installed(name))]
    if not outside:
        return
    found = ", ".join(f"{name} {version}" for name, version in outside)
    tested = ", ".join(describe(name) for name, _ in outside)
    if os.environ.get(ALLOW_ENV) == "1":
        logger.warning("warning: %s is outside the tested range (%s); running because %s=1, "
                       "with the budget guards on", found, tested, ALLOW_ENV)
        return
    pins = " ".join(f"'{name}>={TESTED[name][0]},<{_next_minor(TESTED[name][1])}'" for name, _ in outside)
    raise UpgradeError(
        f"{found} is installed, but hparam_joblib was tested with {tested}: the exact n_trials budget "
        f"and the study file rest on its internals, which a new release may move. "
        f"Install a tested release (pip install {pins}), or set {ALLOW_ENV}=1 to run it behind the "
        "budget guards (they stop the search if a trial is created outside the budget)"
    )


def _next_minor(version: str) -> str:
    major, minor = _minor(version)
    return f"{major}.{minor + 1}"
