"""Command-line flags of a decorated training script: ``--set``, ``--config``, ``--dry-run``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import NoReturn

from hparam_joblib._errors import UsageError
from hparam_joblib._overrides import Override, parse_override


class _Parser(argparse.ArgumentParser):
    """argparse, but errors become one-line ``UsageError``s instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


@dataclass(frozen=True)
class ScriptArgs:
    """Parsed flags of a decorated script."""

    overrides: list[Override]
    config: str | None
    dry_run: bool


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The flag parser (also used to print --help)."""
    p = _Parser(
        prog=prog,
        description="Run a parallel Optuna hyperparameter search defined by a YAML file.",
        epilog=(
            "examples:  --set n_trials=200   --set n_jobs=16 tag=second_sweep   "
            "--set model.first_layer.bias=False"
        ),
    )
    p.add_argument(
        "--set", dest="sets", nargs="+", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value (dotted keys for nesting; values are YAML); repeatable",
    )
    p.add_argument("--config", metavar="PATH", help="use another YAML file (e.g. config/cifar10_exp.yaml)")
    p.add_argument(
        "--dry-run", action="store_true",
        help="print the resolved config and search space; touch no database",
    )
    return p


def parse_args(argv: list[str], prog: str | None = None) -> ScriptArgs:
    """Parse the script's argv (without the program name).

    Raises:
        UsageError: an unknown flag or a missing value.
        OverrideError: a ``--set`` item without ``=`` or with an empty key.
    """
    ns = parser(prog).parse_args(argv)
    overrides = [parse_override(text) for group in ns.sets for text in group]
    return ScriptArgs(overrides=overrides, config=ns.config, dry_run=ns.dry_run)
