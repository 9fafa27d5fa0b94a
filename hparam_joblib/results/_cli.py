"""``hparam-joblib``: read a study database written by a search and report on it.

::

    hparam-joblib status    DB [--study NAME]
    hparam-joblib best      DB [--study NAME] [--format yaml|json]
    hparam-joblib trials    DB [--study NAME] [--csv FILE|-]
    hparam-joblib plot      DB [--study NAME] --out DIR
    hparam-joblib dashboard DB [--port N] [--host HOST]

DB is a SQLite file (or ``sqlite:///`` URL), a journal file (``journal:PATH``, or a file that
is one), or a ``postgresql://`` URL (the password from PGPASSWORD or ~/.pgpass, or in the URL:
never shown, and passed to optuna-dashboard through the environment, not its command line).

The database is opened read-only and never created. Every error the user can fix is printed as
one line ``error: ...`` on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from hparam_joblib._errors import HparamError, MissingExtraError, UsageError, one_line
from hparam_joblib._pipes import CLOSED_PIPE_STATUS, silence
from hparam_joblib.storage import Database, heartbeat_ages, load_study, open_database, reading_study

if TYPE_CHECKING:
    import optuna

    from hparam_joblib.results._read import StudyData

PROG = "hparam-joblib"
PLOTS_INSTALL = 'pip install "hparam_joblib[plots]"'
DASHBOARD_INSTALL = 'pip install "hparam_joblib[dashboard]"'


class _Parser(argparse.ArgumentParser):
    """argparse, but errors become one-line ``UsageError``s instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 65535, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 65535, got {text!r}")
    return port


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (subcommands status, best, trials, plot, dashboard)."""
    parser = _Parser(
        prog=PROG,
        description="Report on a hparam_joblib / Optuna study stored in a SQLite file, a journal file "
        "or a PostgreSQL database.",
        epilog=f"example:  {PROG} status optuna_studies/ImageNet_exp_first_sweep.db",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, with_study: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "db", metavar="DB",
            help="the study database: a .db file (or sqlite:/// URL), a journal file "
            "(journal:PATH), or a postgresql:// URL (password from PGPASSWORD)",
        )
        if with_study:
            p.add_argument("--study", metavar="NAME", help="the study to read when the file holds several")
        return p

    p = add("status", "counts by state, best trial, running trials, throughput, failures by reason")
    p.set_defaults(func=cmd_status)
    p = add("best", "the best trial's config, as YAML ready to reuse (or JSON)")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format (default yaml)")
    p.set_defaults(func=cmd_best)
    p = add("trials", "one row per trial (state, values, params, duration, failure reason): a table "
            "on stdout, or CSV with --csv")
    p.add_argument("--csv", metavar="FILE", help="write CSV to FILE instead ('-': CSV on stdout)")
    p.set_defaults(func=cmd_trials)
    p = add("plot", "write PNG plots (history, importances, parallel coordinates, timeline)")
    p.add_argument("--out", metavar="DIR", required=True, help="directory for the PNG files (created)")
    p.set_defaults(func=cmd_plot)
    p = add("dashboard", "open the database in optuna-dashboard", with_study=False)
    p.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.set_defaults(func=cmd_dashboard)
    return parser


# -- the study ---------------------------------------------------------------------------------


def pick_study(db: Database, name: str | None, shown: str) -> str:
    """The study to read: ``--study`` if given and present, else the only one.

    Raises:
        UsageError: several studies and no ``--study``, or an unknown ``--study``.
    """
    listing = ", ".join(db.studies)
    if name is None:
        if len(db.studies) == 1:
            return db.studies[0]
        raise UsageError(f"{shown} holds {len(db.studies)} studies ({listing}); pick one with --study NAME")
    if name not in db.studies:
        raise UsageError(f"{shown}: no study named {name!r}; studies in the file: {listing}")
    return name


def read_study(ns: argparse.Namespace) -> tuple[Database, optuna.Study, StudyData]:
    """Open ``ns.db``, pick ``ns.study``, load it and take a snapshot of it."""
    from hparam_joblib.results._read import snapshot

    db = open_database(ns.db)
    name = pick_study(db, ns.study, db.shown)
    study = load_study(db, name, ns.resources)
    with reading_study(db, name):
        return db, study, snapshot(study)


# -- commands --------------------------------------------------------------------------------


def cmd_status(ns: argparse.Namespace) -> int:
    """Print counts, best trial or Pareto front, running trials, throughput, failures."""
    from hparam_joblib.results._format import format_status

    db, _, data = read_study(ns)
    print(format_status(data, db.shown, datetime.now(), heartbeat_ages(db, data.name)))
    return 0


def cmd_best(ns: argparse.Namespace) -> int:
    """Print the best trial's config (one per Pareto-optimal trial for several objectives)."""
    from hparam_joblib.results._format import best_json, best_yaml
    from hparam_joblib.results._read import require_best

    db, _, data = read_study(ns)
    require_best(data)
    text = best_json(data) if ns.format == "json" else best_yaml(data, db.shown)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_trials(ns: argparse.Namespace) -> int:
    """Print the trials table, or write it as CSV to ``--csv`` (``-``: stdout)."""
    from hparam_joblib.results._format import csv_cell, format_table
    from hparam_joblib.results._read import trials_table

    _, _, data = read_study(ns)
    columns, rows = trials_table(data)
    if ns.csv is None:
        print(format_table(columns, rows))
        return 0
    if ns.csv == "-":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([csv_cell(c) for c in row] for row in rows)
        return 0
    target = Path(ns.csv)
    try:
        with open(target, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows([csv_cell(c) for c in row] for row in rows)
    except OSError as err:
        raise UsageError(f"--csv {ns.csv}: cannot write the file ({err.strerror or err})") from err
    print(f"wrote {len(rows)} rows ({len(columns)} columns) to {target}")
    return 0


def cmd_plot(ns: argparse.Namespace) -> int:
    """Write the PNG plots to ``--out`` and print their paths (notes for skipped ones on stderr)."""
    try:
        import matplotlib
    except ImportError as err:
        raise MissingExtraError(f"plot needs matplotlib, which is not installed: {PLOTS_INSTALL}") from err
    matplotlib.use("Agg")
    _, study, data = read_study(ns)
    out = Path(ns.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {ns.out}: cannot create the directory ({err.strerror or err})") from err
    written, notes = write_plots(study, data, out)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for path in written:
        print(path)
    return 0


def write_plots(study: optuna.Study, data: StudyData, out: Path) -> tuple[list[Path], list[str]]:
    """Render Optuna's matplotlib plots of ``study`` into ``out``.

    Returns:
        The files written, and one note per plot skipped (with why).
    """
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import FrozenTrial, TrialState
    from optuna.visualization import matplotlib as vis

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no complete trials" etc. become notes
    n_complete = sum(1 for t in data.trials if t.state == TrialState.COMPLETE)
    jobs: list[tuple[str, Callable[[], Any]]] = []
    notes: list[str] = []
    targets: list[tuple[Callable[[FrozenTrial], float] | None, str, str]] = [(None, "Objective Value", "")]
    if data.multi_objective:
        targets = []
        for i, name in enumerate(data.objective_names()):
            safe = re.sub(r"[^\w.-]+", "_", name)  # metric names end up in file names
            targets.append((functools.partial(_objective, index=i), name, f"_{safe}"))
    for target, target_name, suffix in targets:
        kwargs: dict[str, Any] = {"target": target, "target_name": target_name}
        jobs.append((f"optimization_history{suffix}.png",
                     functools.partial(vis.plot_optimization_history, study, **kwargs)))
        if n_complete < 2:
            notes.append(
                f"param_importances{suffix}.png skipped: needs 2 complete trials, the study has {n_complete}"
            )
        else:
            jobs.append((f"param_importances{suffix}.png",
                         functools.partial(vis.plot_param_importances, study, **kwargs)))
        jobs.append((f"parallel_coordinate{suffix}.png",
                     functools.partial(vis.plot_parallel_coordinate, study, **kwargs)))
    if data.multi_objective:
        jobs.append(("pareto_front.png", functools.partial(vis.plot_pareto_front, study)))
    jobs.append(("timeline.png", functools.partial(vis.plot_timeline, study)))

    written: list[Path] = []
    for filename, make in jobs:
        plt.close("all")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning and empty-data warnings
                make()
            path = out / filename
            plt.gcf().savefig(path, dpi=100, bbox_inches="tight")
        except Exception as err:  # noqa: BLE001 - a plot Optuna cannot draw must not stop the rest
            notes.append(f"{filename} skipped: {type(err).__name__}: {one_line(err)}")
            continue
        finally:
            plt.close("all")
        written.append(path)
    return written, notes


def _objective(trial: Any, index: int) -> float:
    return float(trial.values[index])


def dashboard_argv(db_path: Path | str, port: int, host: str) -> list[str] | None:
    """The optuna-dashboard command line, or ``None`` when optuna-dashboard is not installed.

    ``db_path``: a SQLite file (a Path), or the storage text optuna-dashboard takes as is (a
    journal file, a server URL without its password)."""
    storage = f"sqlite:///{db_path}" if isinstance(db_path, Path) else db_path
    args = [storage, "--port", str(port), "--host", host]
    beside = Path(sys.executable).parent / ("optuna-dashboard.exe" if os.name == "nt" else "optuna-dashboard")
    if beside.is_file():
        return [str(beside), *args]
    found = shutil.which("optuna-dashboard")
    if found:
        return [found, *args]
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        return None
    # optuna-dashboard has no __main__; its console script calls this function.
    code = "import sys; from optuna_dashboard._cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, *args]


def cmd_dashboard(ns: argparse.Namespace) -> int:
    """Replace this process with optuna-dashboard on the database."""
    db = open_database(ns.db)
    password = db.location.password  # never on a command line: passed by the environment
    if password:
        os.environ["PGPASSWORD"] = password
    argv = dashboard_argv(db.location.public_url, ns.port, ns.host)
    if argv is None:
        raise MissingExtraError(f"optuna-dashboard is not installed: {DASHBOARD_INSTALL}")
    print(f"{PROG}: running {shlex.join(argv)}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":
        return subprocess.call(argv)
    os.execv(argv[0], argv)
    return 0  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for an error the user can fix)."""
    try:
        ns = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        with contextlib.ExitStack() as ns.resources:  # database connections the command opened
            status = int(ns.func(ns))
        sys.stdout.flush()  # a closed pipe shows here, not in the flush at exit
        return status
    except HparamError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; say nothing (hparam_joblib/_pipes.py)
        silence(sys.stdout)
        silence(sys.stderr)
        return CLOSED_PIPE_STATUS
