"""Shared fixtures: a throwaway project (script + config/ in tmp_path) run in a real subprocess."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._pgserver import pg_url, postgres_server  # noqa: F401  (fixtures: a throwaway PostgreSQL)

REPO = Path(__file__).resolve().parents[1]

#: A training script whose behaviour each trial is chosen by the config ("mode" and friends).
SCRIPT = '''
import ctypes, json, math, os, signal, sys, time
from hparam_joblib import hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    mode = config.get("mode", "ok")
    while config.get("hold") and os.path.exists(config["hold"]):  # the test releases the trials
        time.sleep(0.05)
    sleep = config.get("sleep", 0.0)
    if isinstance(sleep, list):
        sleep = config["x"] * (sleep[1] - sleep[0]) + sleep[0]
    if sleep:
        time.sleep(sleep)
    if mode == "raise":
        raise ValueError("boom from trial")
    if mode == "exit":
        os._exit(3)
    if mode == "segv":
        ctypes.string_at(0)
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang":
        time.sleep(3600)
    if mode == "none":
        return None
    if mode == "nan":
        return math.nan
    if mode == "inf":
        return math.inf
    if mode == "string":
        return "0.5"
    if config.get("record"):
        with open(config["record"], "a") as fh:
            fh.write(json.dumps(config) + "\\n")
    return (config.get("x", 0.0) - 0.25) ** 2

if __name__ == "__main__":
    train()
'''


#: The sweep of most test searches: one float in [0, 1].
X_SWEEP = "  x: {type: float, low: 0.0, high: 1.0}\n"


def search_config(
    *,
    n_trials: object,
    n_jobs: object = 2,
    n_startup_trials: object = 5,
    direction: str | None = "minimize",
    experiment_name: str = "exp",
    tag: str = "t",
    sweep: str = X_SWEEP,
    **settings: object,
) -> str:
    """The YAML of a test search (study ``exp_t`` unless named otherwise): the study keys, then
    ``settings`` one per line in the order given (each value written as YAML text, e.g.
    ``sampler="{type: random}"``), then ``sweep_parameters`` with ``sweep`` (its lines indented
    by two). ``None`` leaves a key out. Text may be appended: more sweep lines, then more keys."""
    keys = {"experiment_name": experiment_name, "tag": tag, "direction": direction, "n_jobs": n_jobs,
            "n_trials": n_trials, "n_startup_trials": n_startup_trials, **settings}
    lines = [f"{key}: {value}" for key, value in keys.items() if value is not None]
    return "\n".join([*lines, "sweep_parameters:"]) + "\n" + sweep


@dataclass
class Project:
    """A user's project directory: script.py, config/config.yaml, optuna_studies/."""

    root: Path

    @property
    def script(self) -> Path:
        return self.root / "script.py"

    def write_config(self, text: str, name: str = "config.yaml") -> Path:
        path = self.root / "config" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def db(self, name: str) -> Path:
        return self.root / "optuna_studies" / f"{name}.db"

    def run(self, *args: str, timeout: float = 240, script: Path | None = None,
            prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """Run the script to completion (under ``prefix``, e.g. :func:`unprivileged_prefix`);
        returns the finished process (stdout, stderr, rc)."""
        return subprocess.run(
            [*prefix, sys.executable, str(script or self.script), *args],
            check=False, cwd=self.root, capture_output=True, text=True, timeout=timeout, env=child_env(),
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Start the script in its own process group (like a terminal job)."""
        return subprocess.Popen(
            [sys.executable, str(self.script), *args], cwd=self.root, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(), start_new_session=True,
        )

    def snapshot(self) -> dict[str, tuple[int, float]]:
        """Every file under the project with its size and mtime (to prove nothing changed)."""
        return {
            str(p.relative_to(self.root)): (p.stat().st_size, p.stat().st_mtime)
            for p in sorted(self.root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
        }


def unprivileged_prefix(project: Project) -> list[str]:
    """How to run the project's script as an ordinary user: ``[]`` when the suite is not root.

    As root (CI) the project's files become ``nobody``'s and the prefix is ``setpriv`` (or
    ``runuser``) to ``nobody``: root passes every permission check, so a test of a permission the
    user lacks proves nothing as root. The project must lie where ``nobody`` may enter
    (:func:`user_project`). The interpreter may sit where only root can enter (pyenv under
    ``/root``): then ``nobody`` also gets ``CAP_DAC_READ_SEARCH`` (read and enter any directory),
    which bypasses no write permission, and ``access()`` ignores it. Skips, saying why, when no
    way works here.
    """
    if os.geteuid() != 0:
        return []
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no 'nobody' user to run the script as")
    for path in [project.root, *project.root.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)  # the user's own project
    ids = [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    candidates = []
    if shutil.which("setpriv"):
        candidates.append(["setpriv", *ids, "--"])
    if shutil.which("runuser"):
        candidates.append(["runuser", "-u", user.pw_name, "--"])
    if shutil.which("setpriv"):
        caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        candidates.append(["setpriv", *ids, *caps, "--"])
    # The probe: our interpreter (not another one found in its place), the package, the script.
    code = "import os, sys, hparam_joblib; open(sys.argv[1]).close(); print(os.geteuid(), sys.version)"
    expected = f"{user.pw_uid} {sys.version}"
    tried = []
    for prefix in candidates:
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", code, str(project.script)],
            check=False, cwd=project.root, capture_output=True, text=True, timeout=60, env=child_env(),
        )
        if probe.returncode == 0 and probe.stdout.strip() == expected:
            return prefix
        last = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}, {probe.stdout.strip()!r}"])[-1]
        tried.append(f"{' '.join(prefix[:-1])}: {last}")
    pytest.skip("running as root, and the script cannot run as 'nobody' here: "
                + ("; ".join(tried) or "neither setpriv nor runuser is installed"))


def wait_for(predicate: Callable[[], Any], timeout: float, poll: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds. Errors while
    polling (a database or journal that does not exist yet, a locked file) count as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the storage may not exist yet
            if predicate():
                return
        time.sleep(poll)
    pytest.fail("condition not reached in time")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first found through /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            found.append(child)
            frontier.append(child)
    return found


def dump_processes(root: int) -> str:
    """What ``root`` and its descendants are doing: state, kernel wait channel, command line and,
    when py-spy is installed (the dev extra), each Python process's stacks. For the failure
    message of a test that timed out waiting on them (a hang is otherwise a bare timeout)."""
    spy = Path(sys.executable).with_name("py-spy")
    lines = []
    for pid in [root, *descendants(root)]:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            wchan = Path(f"/proc/{pid}/wchan").read_text()
        except OSError:
            continue
        lines.append(f"--- pid {pid} state {_state(pid)} wchan {wchan}: {cmd[:200]}")
        if spy.exists():
            try:
                out = subprocess.run([str(spy), "dump", "--pid", str(pid)], check=False, capture_output=True,
                                     text=True, timeout=60)
                lines.append(out.stdout.strip() or out.stderr.strip())
            except (OSError, subprocess.TimeoutExpired) as err:
                lines.append(f"py-spy: {err}")
    return "\n".join(lines)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONWARNINGS", None)
    return env


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    """A fresh project with the standard test script."""
    proj = Project(tmp_path)
    proj.script.write_text(SCRIPT)
    yield proj
    _kill_leftovers(tmp_path)


@pytest.fixture
def user_project() -> Iterator[Project]:
    """:func:`project`, in a directory of its own under the system's temporary directory, which
    any user may enter (``tmp_path`` lies under a directory only its owner may enter): for a
    script run as another user (:func:`unprivileged_prefix`)."""
    root = Path(tempfile.mkdtemp(prefix="hj-user-project-"))
    proj = Project(root)
    proj.script.write_text(SCRIPT)
    try:
        yield proj
        _kill_leftovers(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def searched_project(root: Path, script: str, config: str, timeout: float) -> Iterator[Project]:
    """A project in ``root`` after one search that succeeded (for a module's fixture: many tests
    read its study); a process it left behind fails the test at exit."""
    proj = Project(root)
    proj.script.write_text(script)
    proj.write_config(config)
    try:
        done = proj.run(timeout=timeout)
        assert done.returncode == 0, done.stderr[-2000:]
        yield proj
    finally:
        _kill_leftovers(root)


def _kill_leftovers(root: Path) -> None:
    """Fail the test if a process started from this project is still alive; kill it either way."""
    leftovers = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cwd = os.readlink(pid_dir / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(root)) and int(pid_dir.name) != os.getpid():
            leftovers.append(int(pid_dir.name))
    deadline = time.monotonic() + 10
    while leftovers and time.monotonic() < deadline:
        leftovers = [p for p in leftovers if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
        time.sleep(0.2)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leftovers, f"processes outlived the test: {leftovers}"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def states(db: Path) -> dict[str, int]:
    """Trial counts by state, read straight from the SQLite file."""
    with closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())


def running_count(db: Path) -> int:
    """RUNNING trials in ``db``; 0 while the launcher has not created the file or schema yet."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def finished(db: Path) -> int:
    counts = states(db)
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def trials(db: Path) -> list[dict[str, Any]]:
    """Every trial with its state, value, params, user attrs and owner, via Optuna."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    try:
        (summary,) = optuna.get_all_study_summaries(storage)
        study_trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    out = []
    for t in study_trials:
        out.append({
            "number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "user_attrs": t.user_attrs, "system_attrs": t.system_attrs,
            "start": t.datetime_start, "complete": t.datetime_complete,
        })
    return out


def integrity(db: Path) -> str:
    with closing(sqlite3.connect(db)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
