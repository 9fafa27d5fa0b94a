"""The results command line (``python -m hparam_joblib`` / ``hparam-joblib``) in real subprocesses.

One study database comes from a real search run through the package; the odd cases (several
studies, a RUNNING or FAIL trial, no stored trial config, several objectives, no trials) are
written with plain Optuna on a SQLite file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import SCRIPT, Project, child_env, running_count, searched_project, states

# Above the 120 s its searches may take (the module's `real` fixture; a search with `status` run
# beside it), so that their own bounds say what hung.
pytestmark = pytest.mark.timeout(180)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = """
experiment_name: cli
tag: t
direction: minimize
n_jobs: 2
n_trials: 20
n_startup_trials: 20
seed: 3
max_trial_errors: 0  # two modes of three fail: the first trials may all fail by chance
model:
  width: 8
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0}
  model.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  model.depth: {type: int, low: 1, high: 4}
  mode: {type: categorical, choices: [ok, raise, none]}
"""
STUDY_CONFIG = {
    "experiment_name": "odd",
    "tag": "t",
    "direction": "minimize",
    "n_trials": 10,
    "opt": {"momentum": 0.9},
    "sweep_parameters": {"opt.lr": {"type": "float", "low": 0.0, "high": 1.0}, "layers": {"type": "int"}},
}


def cli(*args: str, cwd: Path | None = None, prelude: str = "", env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hparam_joblib ARGS`` (after ``prelude`` Python code when given)."""
    if prelude:
        code = f"{prelude}\nimport sys\nfrom hparam_joblib.results._cli import main\n"
        code += "sys.exit(main(sys.argv[1:]))"
        command = [sys.executable, "-c", code, *args]
    else:
        command = [sys.executable, "-m", "hparam_joblib", *args]
    return subprocess.run(
        command, check=False, cwd=cwd, capture_output=True, text=True, timeout=60, env=env or child_env()
    )


def assert_user_error(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit status 2, one ``error: ...`` line on stderr, no traceback; returns that line."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Call the CLI's ``main`` in this process (fast; for the many error cases)."""
    from hparam_joblib.results._cli import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rdb(db: Path) -> optuna.storages.RDBStorage:
    """Optuna's own storage on the SQLite file ``db`` (its warnings only)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.storages.RDBStorage(f"sqlite:///{db}")


def load(db: Path, name: str | None = None) -> optuna.Study:
    storage = rdb(db)
    try:
        if name is None:
            (summary,) = optuna.get_all_study_summaries(storage)
            name = summary.study_name
        copy = optuna.storages.InMemoryStorage()  # a copy, so no connection outlives the call
        optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=copy)
        return optuna.load_study(study_name=name, storage=copy)
    finally:
        storage.engine.dispose()


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The database of a real 20-trial search (2 workers; trials complete, raise or return None)."""
    with searched_project(tmp_path_factory.mktemp("real"), SCRIPT, CONFIG, timeout=120) as proj:
        db = proj.db("cli_t")
        counts = states(db)
        assert counts.get("COMPLETE", 0) >= 2 and counts.get("PRUNED", 0) >= 1, counts
        yield db


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two studies in one file; 'odd' has FAIL/RUNNING/reasonless trials and no trial configs."""
    db = tmp_path_factory.mktemp("odd") / "odd.db"
    storage = rdb(db)
    study = optuna.create_study(study_name="odd", storage=storage)
    study.set_user_attr("config", STUDY_CONFIG)
    for lr, layers in ((0.5, 2), (0.2, 3)):
        trial = study.ask()
        trial.suggest_float("opt.lr", 0.0, 1.0)
        trial.suggest_int("layers", 1, 4)
        study.tell(trial, (lr - 0.25) ** 2 + layers)
    study.enqueue_trial({"opt.lr": 0.2, "layers": 1})
    trial = study.ask({"opt.lr": optuna.distributions.FloatDistribution(0.0, 1.0),
                       "layers": optuna.distributions.IntDistribution(1, 4)})
    study.tell(trial, (trial.params["opt.lr"] - 0.25) ** 2 + trial.params["layers"])
    crashed = study.ask()
    crashed.set_user_attr("failure_reason", "its process (pid 4242) died while the trial ran")
    study.tell(crashed, state=optuna.trial.TrialState.FAIL)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    running = study.ask()
    study._storage.set_trial_system_attr(
        running._trial_id, "hparam_joblib:owner",
        {"host": socket.gethostname(), "pid": os.getpid(), "start": None, "run": "r1"},
    )
    other = optuna.create_study(study_name="other", storage=storage, direction="maximize")
    other.optimize(lambda t: t.suggest_float("a", 0.0, 1.0), n_trials=3)
    storage.engine.dispose()
    return db


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-objective study whose trials carry their config, as the package would store it."""
    db = tmp_path_factory.mktemp("multi") / "mo.db"
    storage = rdb(db)
    study = optuna.create_study(study_name="mo", storage=storage, directions=["minimize", "maximize"])

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        a, b = trial.suggest_float("opt.a", 0, 1), trial.suggest_float("b", 0, 1)
        trial.set_user_attr("config", {"experiment_name": "mo", "opt": {"a": a}, "b": b})
        return a, a + b

    study.optimize(objective, n_trials=10)
    storage.engine.dispose()
    return db


# -- a database from a real search -------------------------------------------------------------


def test_status_on_a_real_search(real: Path) -> None:
    """Counts, best value and params, throughput and failures grouped by their stored reason."""
    before = digest(real)
    done = cli("status", str(real))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    study = load(real)
    counts = states(real)
    assert "study:      cli_t (minimize)" in out
    assert f"COMPLETE {counts['COMPLETE']}, PRUNED {counts['PRUNED']}" in out
    assert "20/20 of n_trials finished" in out
    assert f"best:       {study.best_value:.6g} (trial {study.best_trial.number})" in out
    for name in ("x", "model.lr", "model.depth", "mode"):
        assert f"  {name} " in out
    assert "running:    none" in out
    assert "finished trials/min (20 in" in out
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    for reason in {t.user_attrs["failure_reason"] for t in pruned}:
        n = sum(t.user_attrs["failure_reason"] == reason for t in pruned)
        assert f"  {n}  {reason}" in out
    assert digest(real) == before, "status must not write to the database"


def test_best_yaml_reloads_to_the_best_trials_config(real: Path) -> None:
    """`best` prints YAML that safe_load turns back into the trial's config; header names it."""
    study = load(real)
    best = study.best_trial
    done = cli("best", str(real))
    assert done.returncode == 0, done.stderr
    config = dict(best.user_attrs["config"])
    # plus the settings of a one-trial study of its own (a valid --config file, issue 12)
    assert yaml.safe_load(done.stdout) == {**config, "tag": "t_best", "direction": "minimize", "n_trials": 1, "n_jobs": 1}
    assert "python your_script.py --config best.yaml runs it once as study cli_t_best" in done.stdout
    header = done.stdout.splitlines()[0]
    assert header.startswith("#") and "cli_t" in header and f"trial {best.number}" in header
    assert repr(best.value) in header
    assert "sweep_parameters" not in done.stdout
    assert yaml.safe_load(done.stdout)["model"]["width"] == 8


def test_trials_prints_a_table_by_default(real: Path, tmp_path: Path) -> None:
    """`trials DB` prints an aligned table (one row per trial) on stdout and writes no file."""
    done = cli("trials", str(real), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["number", "state", "value", "x", "model.lr", "model.depth", "mode",
                                "duration_s", "cpu_s", "failure_reason", "peak_rss_mib"]
    assert len(lines) == 21
    study = load(real)
    for t in study.trials:
        assert lines[1 + t.number].split()[:2] == [str(t.number), t.state.name]
    assert list(tmp_path.iterdir()) == []


def test_trials_csv_dash_writes_csv_to_stdout(real: Path, tmp_path: Path) -> None:
    """`--csv -` is CSV on stdout, never a file named '-'."""
    done = cli("trials", str(real), "--csv", "-", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(done.stdout.splitlines()))
    assert len(rows) == 20 and rows[0]["number"] == "0"
    assert not (tmp_path / "-").exists()


def test_trials_dataframe_works_with_the_plots_extra(real: Path) -> None:
    """study.trials_dataframe() needs pandas, which the plots extra installs."""
    pytest.importorskip("pandas")
    frame = load(real).trials_dataframe()
    assert len(frame) == 20 and "params_x" in frame.columns


def test_best_json_prints_the_same_mapping(real: Path) -> None:
    """`best --format json` is the same config as plain JSON."""
    done = cli("best", str(real), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == load(real).best_trial.user_attrs["config"]


def test_trials_csv_has_one_row_per_trial(real: Path, tmp_path: Path) -> None:
    """Every trial is a row with state, value, each param, duration, datetimes, reason."""
    target = tmp_path / "trials.csv"
    done = cli("trials", str(real), "--csv", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote 20 rows")
    with open(target, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "number", "state", "value", "params_x", "params_model.lr", "params_model.depth", "params_mode",
        "duration_s", "cpu_s", "datetime_start", "datetime_complete", "failure_reason", "peak_rss_mib", "peak_gpu_mib", "log_file",
    ]
    by_number = {t.number: t for t in load(real).trials}
    assert sorted(int(r["number"]) for r in rows) == sorted(by_number)
    for row in rows:
        trial = by_number[int(row["number"])]
        assert row["state"] == trial.state.name
        assert float(row["params_x"]) == trial.params["x"]
        assert float(row["duration_s"]) >= 0 and row["datetime_start"] and row["datetime_complete"]
        if trial.state.name == "COMPLETE":
            assert float(row["value"]) == trial.value and row["failure_reason"] == ""
        else:
            assert row["value"] == "" and row["failure_reason"] == trial.user_attrs["failure_reason"].splitlines()[0]
        assert Path(row["log_file"]).is_file() and float(row["peak_rss_mib"]) > 0
        assert float(row["cpu_s"]) >= 0


@pytest.mark.slow
def test_plot_writes_valid_pngs(real: Path, tmp_path: Path) -> None:
    """History, importances, parallel coordinates and timeline: written, printed, real PNGs."""
    out = tmp_path / "plots" / "nested"
    done = cli("plot", str(real), "--out", str(out))
    assert done.returncode == 0, done.stderr
    names = ["optimization_history.png", "param_importances.png", "parallel_coordinate.png", "timeline.png"]
    assert done.stdout.split() == [str(out / n) for n in names]
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000


def test_plot_without_matplotlib_names_the_extra(real: Path, tmp_path: Path) -> None:
    """No matplotlib: one line naming `pip install "hparam_joblib[plots]"`, exit 2, no files."""
    hide = "import sys; sys.modules['matplotlib'] = None"
    done = cli("plot", str(real), "--out", str(tmp_path / "p"), prelude=hide)
    assert_user_error(done, 'pip install "hparam_joblib[plots]"')
    assert not (tmp_path / "p").exists()


def test_status_during_a_running_search(project: Project) -> None:
    """Read while workers write: RUNNING trials with their worker pid; the search still finishes.

    The trials wait on a hold file until `status` has run, so a slow start of the command on a
    loaded machine cannot miss them."""
    hold = project.root / "hold"
    hold.touch()
    project.write_config(f"""
        experiment_name: live
        tag: t
        n_jobs: 2
        n_trials: 4
        sleep: 0.2
        hold: {hold}
        sweep_parameters:
          x: {{type: float, low: 0.0, high: 1.0}}
    """)
    db = project.db("live_t")
    proc = project.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if running_count(db):
                break
            time.sleep(0.1)
        done = cli("status", str(db))
        assert done.returncode == 0, done.stderr
        assert "running:    none" not in done.stdout
        line = re.compile(r"^  trial \d+ started .* ago\) on \S+ pid \d+$", re.MULTILINE)
        assert line.search(done.stdout), done.stdout
    finally:
        hold.unlink(missing_ok=True)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert states(db) == {"COMPLETE": 4}


# -- odd and hand-made databases -----------------------------------------------------------------


def test_several_studies_need_study_flag_and_list_names(odd: Path) -> None:
    """Two studies and no --study, or an unknown one: exit 2 listing both names."""
    assert_user_error(cli("status", str(odd)), "holds 2 studies", "odd, other", "--study")
    assert_user_error(cli("best", str(odd), "--study", "nope"), "'nope'", "odd, other")
    done = cli("status", str(odd), "--study", "other")
    assert done.returncode == 0 and "study:      other (maximize)" in done.stdout


def test_status_shows_running_fail_and_reasonless_trials(odd: Path) -> None:
    """RUNNING trials with their owner; FAIL and PRUNED grouped by reason, placeholder when none."""
    done = cli("status", str(odd), "--study", "odd")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "trials:     6 (COMPLETE 3, PRUNED 1, FAIL 1, RUNNING 1); 4/10 of n_trials finished" in out
    assert "running:    1\n  trial 5 started " in out and f"on {socket.gethostname()} pid " in out
    assert "  1  its process (pid 4242) died while the trial ran" in out
    assert "  1  (pruned, no reason recorded)" in out
    assert "best:       1.0025 (trial 2)" in out


def test_best_rebuilds_config_from_study_config_when_trial_has_none(odd: Path) -> None:
    """No trial config stored: study config minus sweep_parameters, best values at their paths."""
    done = cli("best", str(odd), "--study", "odd")
    assert done.returncode == 0, done.stderr
    expected = {k: v for k, v in STUDY_CONFIG.items() if k != "sweep_parameters"}
    expected["opt"] = {"momentum": 0.9, "lr": 0.2}
    expected["layers"] = 1
    expected.update(tag="t_best", n_trials=1, n_jobs=1)
    assert yaml.safe_load(done.stdout) == expected
    assert "rebuilt from the study config" in done.stdout


@pytest.mark.slow
def test_multi_objective_shows_the_pareto_front(
    multi: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several objectives: status and best list the Pareto front; CSV and plots do not crash."""
    front = sorted(load(multi).best_trials, key=lambda t: t.number)
    status = cli("status", str(multi))
    assert status.returncode == 0, status.stderr
    assert f"Pareto front of {len(front)} trial(s)" in status.stdout
    for trial in front:
        assert f"  trial {trial.number}: values [" in status.stdout
    done = cli("best", str(multi))
    assert done.returncode == 0, done.stderr
    assert list(yaml.safe_load_all(done.stdout)) == [t.user_attrs["config"] for t in front]
    done = run_main(capsys, "best", str(multi), "--format", "json")
    assert [d["trial"] for d in json.loads(done.stdout)] == [t.number for t in front]
    target = tmp_path / "mo.csv"
    done = run_main(capsys, "trials", str(multi), "--csv", str(target))
    assert done.returncode == 0, done.stderr
    with open(target, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and {"value_0", "value_1", "params_opt.a", "params_b"} <= set(rows[0])
    done = cli("plot", str(multi), "--out", str(tmp_path / "plots"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "plots" / "pareto_front.png").read_bytes().startswith(PNG_MAGIC)
    assert "Traceback" not in done.stderr


def test_a_study_without_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Zero trials: status works, trials writes a header only, best is a one-line error."""
    db = tmp_path / "empty.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    optuna.create_study(study_name="empty", storage=storage)
    storage.engine.dispose()
    done = cli("status", str(db))
    assert done.returncode == 0 and "best:       none yet" in done.stdout
    done = run_main(capsys, "trials", str(db), "--csv", str(tmp_path / "e.csv"))
    assert done.returncode == 0 and done.stdout.startswith("wrote 0 rows")
    assert_user_error(run_main(capsys, "best", str(db)), "'empty' has no completed trial yet")


# -- bad input: one line, exit 2, no traceback, nothing created ------------------------------------


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of files that are not usable study databases."""
    root = tmp_path_factory.mktemp("bad")
    (root / "text.db").write_text("not a database\n")
    (root / "zero.db").write_bytes(b"")
    (root / "garbage.db").write_bytes(b"SQLite format 3\x00" + b"\x07" * 2000)
    with closing(sqlite3.connect(root / "other_app.db")) as conn:
        conn.execute("CREATE TABLE notes (x)")
    optuna.storages.RDBStorage(f"sqlite:///{root / 'no_study.db'}").engine.dispose()
    (root / "adir.db").mkdir()
    return root


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("missing.db", "missing.db: no such file"),
        ("adir.db", "is a directory"),
        ("text.db", "is not a SQLite database"),
        ("zero.db", "is not a SQLite database"),
        ("garbage.db", "cannot read the database"),
        ("other_app.db", "holds no Optuna study"),
        ("no_study.db", "holds no study"),
    ],
)
def test_bad_database_is_one_line_error(
    bad_dir: Path, capsys: pytest.CaptureFixture[str], name: str, fragment: str
) -> None:
    """Every unusable path fails on one line with exit 2 and leaves the files as they were."""
    before = {p.name: (p.is_file() and digest(p)) for p in bad_dir.iterdir()}
    assert_user_error(run_main(capsys, "status", str(bad_dir / name)), fragment)
    after = {
        p.name: (p.is_file() and digest(p))
        for p in bad_dir.iterdir()
        if not p.name.endswith(("-shm", "-wal"))
    }
    assert after == before
    assert not (bad_dir / "missing.db").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "COMMAND"),
        (("frobnicate", "x.db"), "invalid choice: 'frobnicate'"),
        (("status",), "DB"),
        (("status", "{db}", "--bogus"), "unrecognized arguments: --bogus"),
        (("best", "{db}", "--format", "xml"), "invalid choice: 'xml'"),
        (("trials", "{db}", "--csv"), "--csv"),
        (("plot", "{db}"), "--out"),
        (("dashboard", "{db}", "--port", "99999"), "--port"),
        (("trials", "{db}", "--study", "odd", "--csv", "/nonexistent/dir/t.csv"), "cannot write the file"),
    ],
)
def test_bad_flags_are_one_line_errors(
    odd: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], fragment: str
) -> None:
    """argparse mistakes and unwritable outputs: one line, exit 2, no usage block."""
    assert_user_error(run_main(capsys, *(a.format(db=odd) for a in args)), fragment)


def test_errors_from_a_real_process_have_no_traceback(bad_dir: Path, odd: Path) -> None:
    """The same errors through `python -m hparam_joblib`: stderr is the one line, exit 2."""
    assert_user_error(cli("best", str(bad_dir / "missing.db")), "no such file")
    assert_user_error(cli("status", str(bad_dir / "garbage.db")), "cannot read the database")
    assert_user_error(cli("status", str(odd), "--bogus"), "unrecognized arguments: --bogus")
    assert not (bad_dir / "missing.db").exists()


# -- dashboard and entry points --------------------------------------------------------------------


#: Child-side prelude: optuna-dashboard is neither importable nor beside the interpreter.
NO_DASHBOARD = (
    "import sys; sys.modules['optuna_dashboard'] = None; sys.executable = '/nonexistent/bin/python'"
)


def _dashboard_installed() -> bool:
    if (Path(sys.executable).parent / "optuna-dashboard").exists():
        return True
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_dashboard_missing_names_the_extra(real: Path, tmp_path: Path) -> None:
    """Without optuna-dashboard: one line naming `pip install "hparam_joblib[dashboard]"`, exit 2."""
    env = child_env()
    env["PATH"] = str(tmp_path)
    done = cli("dashboard", str(real), env=env, prelude=NO_DASHBOARD)
    assert_user_error(done, 'pip install "hparam_joblib[dashboard]"')


def test_dashboard_execs_optuna_dashboard_on_the_absolute_url(real: Path, tmp_path: Path) -> None:
    """The optuna-dashboard found on PATH replaces the process with sqlite:///ABS, port and host."""
    fake = tmp_path / "bin" / "optuna-dashboard"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "ARGS $*"\n')
    fake.chmod(0o755)
    env = child_env()
    env["PATH"] = f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin"
    relative = os.path.relpath(real, tmp_path)
    done = cli("dashboard", relative, "--port", "8123", cwd=tmp_path, env=env, prelude=NO_DASHBOARD)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ARGS sqlite:///{real.resolve()} --port 8123 --host 127.0.0.1"


@pytest.mark.skipif(not _dashboard_installed(), reason="optuna-dashboard is not installed")
def test_dashboard_serves_the_study(real: Path) -> None:
    """With optuna-dashboard installed, `dashboard` serves the study over HTTP on --port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hparam_joblib", "dashboard", str(real), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env(),
    )
    try:
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as reply:
                    body = reply.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert '"study_name": "cli_t"' in body, proc.stderr.read() if proc.poll() is not None else body
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_help_and_console_script() -> None:
    """`python -m hparam_joblib --help` lists the commands; the console script is the same CLI."""
    done = cli("--help")
    assert done.returncode == 0
    for command in ("status", "best", "trials", "plot", "dashboard"):
        assert command in done.stdout
    script = shutil.which("hparam-joblib", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("package not installed with its console script (pip install -e .)")
    done = subprocess.run(
        [script, "frob"], check=False, capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert_user_error(done, "invalid choice: 'frob'")
