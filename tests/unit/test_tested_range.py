"""The tested range (#22): declared once in ``hparam_joblib/_tested.py``, pinned the same in
``pyproject.toml``, and enforced per path (Optuna/SQLAlchemy refused, Python falls back)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from hparam_joblib import UpgradeError, _tested
from hparam_joblib.runtime.loops import _forkserver

REPO = Path(__file__).resolve().parents[2]


def _pyproject() -> str:
    return (REPO / "pyproject.toml").read_text()  # read as text: Python 3.10 has no tomllib


def _pins() -> dict[str, str]:
    block = _pyproject().split("dependencies = [", 1)[1].split("]", 1)[0]
    deps = re.findall(r'^\s*"([^"]+)"', block, flags=re.MULTILINE)
    return {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower(): d for d in deps}


@pytest.mark.parametrize("name", ["optuna", "sqlalchemy"])
def test_pyproject_pins_exactly_the_tested_range(name: str) -> None:
    """pip installs only what was tested: `>=oldest,<newest+1` for every refused package."""
    low, high = _tested.TESTED[name]
    major, minor = (int(p) for p in high.split("."))
    assert _pins()[name].replace(" ", "") == f"{name}>={low},<{major}.{minor + 1}"


def test_python_range_matches_what_ci_runs() -> None:
    """requires-python starts at the oldest tested Python; CI runs every version in the range."""
    assert f'requires-python = ">={_tested.TESTED["python"][0]}"' in _pyproject()
    ci = (REPO / ".ci" / "run").read_text()
    low, high = (int(v.split(".")[1]) for v in _tested.TESTED["python"])
    for minor in range(low, high + 1):
        assert f"3.{minor}" in ci, f"3.{minor} is in the tested range but .ci/run does not run it"


def test_the_installed_versions_are_inside_the_range() -> None:
    """What `make venv` installs is what the suite tests (a wider pin would fail here)."""
    for name in ("optuna", "sqlalchemy", "python"):
        assert _tested.inside(name, _tested.installed(name)), (name, _tested.installed(name))
    _tested.require_tested()  # no error, no warning


@pytest.mark.parametrize(("version", "inside"), [
    ("5.0.0", True), ("5.1.3", True), ("5.2.0", False), ("5.2.0rc1", False), ("4.5.0", False), ("6.0.0", False),
])
def test_inside_compares_major_minor(version: str, inside: bool) -> None:
    assert _tested.inside("optuna", version) is inside


def test_outside_the_range_refuses_in_one_line_unless_allowed(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The refusal names the installed and tested versions, the pip pin and the override; the
    override turns it into one warning line. (The versions are made outside by narrowing the
    table; tests/integration/test_upgrade_safety.py runs a real Optuna 4.5.0.)"""
    installed = _tested.installed("optuna")
    monkeypatch.setitem(_tested.TESTED, "optuna", ("9.0", "9.1"))
    monkeypatch.delenv(_tested.ALLOW_ENV, raising=False)
    with pytest.raises(UpgradeError) as info:
        _tested.require_tested()
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"optuna {installed} is installed, but hparam_joblib was tested with optuna 9.0-9.1")
    assert "pip install 'optuna>=9.0,<9.2'" in text and "HPARAM_JOBLIB_ALLOW_UNTESTED=1" in text
    monkeypatch.setenv(_tested.ALLOW_ENV, "1")
    _tested.require_tested()
    assert [r.getMessage() for r in caplog.records if "outside the tested range" in r.getMessage()]


def test_a_python_outside_the_range_starts_workers_without_the_preloaded_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The preloaded server copies multiprocessing internals: outside the tested Pythons the
    workers are loky's own fresh interpreters (public API)."""
    assert _forkserver.context() is not None  # this Python is tested
    here = f"3.{sys.version_info[1]}"
    monkeypatch.setitem(_tested.TESTED, "python", ("3.0", "3.1"))
    assert not _tested.python_tested() and here
    assert _forkserver.context() is None
