"""Command-line flags of a decorated training script: ``--set``, ``--config``, ``--dry-run``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import NoReturn

from hparam_joblib._errors import UsageError
from hparam_joblib.config._overrides import Override, parse_override


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
    tune_n_jobs: bool = False
    tune_seconds: float = 20.0
    tune_ladder: tuple[int, ...] = ()
    tune_plot: str | None = None
    best: bool = False
    verbosity: str | None = None
    retry_failed: bool = False


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
    p.add_argument(
        "--best", action="store_true",
        help="run the function once, in this process, on the best trial's config of the study "
        "(--set values of fixed parameters on top) and print the value; nothing is written",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const="quiet",
                     help="no progress bar and no per-trial lines: warnings, errors and the summary only")
    out.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const="verbose",
                     help="every pruned trial, debug lines, and storage latency in the summary")
    p.add_argument(
        "--retry-failed", action="store_true",
        help="after fixing the code: re-run the trials that failed by an error (they stay in the "
        "study as PRUNED, no longer counted), so the study ends with n_trials trials of the fixed code",
    )
    tune = p.add_argument_group("tuning n_jobs")
    tune.add_argument(
        "--tune-n-jobs", action="store_true",
        help="run your function at a ladder of n_jobs values in a throwaway study, print "
        "trials/s, speedup, efficiency and memory, and recommend n_jobs (the real study is untouched)",
    )
    tune.add_argument("--tune-seconds", type=_positive_float, default=20.0, metavar="S",
                      help="seconds of trials per rung, from each worker's trial process ready; trials still "
                      "running a quarter of that later are stopped (default 20)")
    tune.add_argument("--tune-ladder", type=_ladder, default=(), metavar="1,2,4",
                      help="n_jobs values to try (default 1, 2, 4, ... up to twice the cores)")
    tune.add_argument("--tune-plot", metavar="PNG", help="also save the ladder as a PNG (needs matplotlib)")
    return p


def parse_args(argv: list[str], prog: str | None = None) -> ScriptArgs:
    """Parse the script's argv (without the program name).

    Raises:
        UsageError: an unknown flag or a missing value.
        OverrideError: a ``--set`` item without ``=`` or with an empty key.
    """
    ns = parser(prog).parse_args(argv)
    overrides = [parse_override(text) for group in ns.sets for text in group]
    return ScriptArgs(
        overrides=overrides, config=ns.config, dry_run=ns.dry_run, tune_n_jobs=ns.tune_n_jobs,
        tune_seconds=ns.tune_seconds, tune_ladder=ns.tune_ladder, tune_plot=ns.tune_plot,
        best=ns.best, verbosity=ns.verbosity, retry_failed=ns.retry_failed,
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _ladder(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2,4, got {text!r}")
    return values
