"""Load on the database: SQL statements and round trips per trial on PostgreSQL, hparam_joblib's
loops beside Optuna's own multi-process RDB recipe, at n_jobs 1 and 8, on a trivial objective.

Counting is exact and counts every process: each run's processes connect to PostgreSQL through a
small proxy in this script that reads the wire protocol the clients send (it answers nothing
itself): a simple ``Query`` or an extended-protocol ``Sync`` is one **round trip** (the client
waits for the server's answer); a ``Query`` or ``Execute`` that is not BEGIN/COMMIT/ROLLBACK is
one **statement**; a COMMIT or ROLLBACK is one **transaction**. Each connection is attributed to
the client process that opened it (its socket, found in ``/proc``): hparam_joblib's launcher
(schema, study, run record, then progress polling: per second, not per trial) or a worker (our
loops; every process of Optuna's recipe).

Per-trial cost against per-launch cost: each point runs twice, with 24 and 72 trials (fresh
database each); workers' per trial = (workers(72) - workers(24)) / 48, fixed = workers(24) - 24 x
per trial (negative when the first, random-sampled trials cost less than the TPE ones the
difference measures). What grows with time rather than trials is measured in three more runs of
sleeping trials (``time_points``; ``--no-heartbeat-run`` skips them): our heartbeats (every
``heartbeat_interval``, 10 s by default, per running trial) and the launcher's polling (its
progress and stop checks: per second, not per trial).

The recipe, as Optuna documents it for several processes: each of N processes runs
``optuna.create_study(storage="postgresql://...", study_name=..., load_if_exists=True)`` and
``study.optimize(objective, n_trials=total / N)``, TPE (seed i) and Optuna's default pruner.
Objectives: ``plain`` (two float parameters, returns a value) and ``report`` (the same plus two
intermediate values, each followed by the pruner's question: ``trial.report`` +
``trial.should_prune`` for Optuna, ``hparam_joblib.report`` for us, with ``pruner: {type: median}``,
Optuna's default pruner, since ours defaults to none).

    python benchmarks/db_load.py                      # the full table (about 5-10 min on 2 cores)
    python benchmarks/db_load.py --quick              # n_jobs 1 only, plain objective

PostgreSQL: ``HPARAM_JOBLIB_TEST_PG_URL=postgresql://user@host:port`` uses a running server (a
database per run is created and dropped); otherwise a throwaway server is started with
``scripts/pg_throwaway.sh`` and stopped at the end. Results: a table on stdout and
``benchmarks/results/<run-name>/db_load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
SMALL, LARGE = 24, 72  # trials per run: divisible by 8, so the recipe's processes split them evenly

# -- the wire-protocol counter -----------------------------------------------------------------------
_SSL_REQUEST, _GSS_REQUEST, _CANCEL_REQUEST = 80877103, 80877104, 80877102
_TX = re.compile(r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b", re.IGNORECASE)


def _shape(sql: str) -> str:
    """A statement's text with literals and lists folded, to group the counts by kind."""
    text = " ".join(sql.split())
    text = re.sub(r"'(?:[^']|'')*'", "?", text)
    text = re.sub(r"\b\d+(\.\d+)?\b", "?", text)
    text = re.sub(r"\$\d+", "?", text)
    text = re.sub(r"\((\s*\?\s*,)+\s*\?\s*\)", "(?...)", text)
    return text[:160]


@dataclass
class Conn:
    """What one client connection sent."""

    pid: int | None
    cmd: str
    opened: float
    round_trips: int = 0
    statements: int = 0
    begins: int = 0
    commits: int = 0
    rollbacks: int = 0
    by_shape: Counter[str] = field(default_factory=Counter)

    def count(self, sql: str | None, *, executes: bool) -> None:
        tx = _TX.match(sql or "")
        if tx:
            word = tx.group(1).upper()
            if word in ("BEGIN", "START"):
                self.begins += 1
            elif word in ("COMMIT", "END"):
                self.commits += 1
            elif word == "ROLLBACK":
                self.rollbacks += 1
        elif executes:
            self.statements += 1
            self.by_shape[_shape(sql or "?")] += 1


def _owner_of(port: int, proxy_port: int) -> tuple[int | None, str]:
    """The pid and command line of the local process whose TCP socket has source ``port`` and
    is connected to the proxy (read from /proc/net/tcp, then the processes' descriptors)."""
    local, remote = f":{port:04X}", f":{proxy_port:04X}"
    inode = None
    try:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[1].endswith(local) and cols[2].endswith(remote):
                inode = cols[9]
                break
    except OSError:
        return None, "?"
    if inode is None:
        return None, "?"
    target = f"socket:[{inode}]"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                    return int(proc.name), cmd
        except OSError:
            continue
    return None, "?"


class Proxy:
    """A TCP proxy in front of the server that counts what each client connection sends."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = int(self.sock.getsockname()[1])
        self.lock = threading.Lock()
        self.conns: list[Conn] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def take(self) -> list[Conn]:
        """The connections seen since the last call."""
        with self.lock:
            conns, self.conns = self.conns, []
        return conns

    def _accept(self) -> None:
        while True:
            client, addr = self.sock.accept()
            threading.Thread(target=self._serve, args=(client, int(addr[1])), daemon=True).start()

    def _serve(self, client: socket.socket, port: int) -> None:
        pid, cmd = _owner_of(port, self.port)
        conn = Conn(pid=pid, cmd=cmd, opened=time.time())
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
        try:
            self._client_stream(client, server, conn)
        finally:
            for s in (client, server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _client_stream(self, client: socket.socket, server: socket.socket, conn: Conn) -> None:
        buf = bytearray()

        def need(n: int) -> bool:
            while len(buf) < n:
                data = client.recv(65536)
                if not data:
                    return False
                buf.extend(data)
            return True

        # start-up: SSL/GSS requests are refused here (the client goes on in plain text)
        while True:
            if not need(8):
                return
            length, code = struct.unpack("!II", bytes(buf[:8]))
            if not need(length):
                return
            if code in (_SSL_REQUEST, _GSS_REQUEST):
                del buf[:length]
                client.sendall(b"N")
                continue
            server.sendall(bytes(buf[:length]))
            del buf[:length]
            if code == _CANCEL_REQUEST:
                return
            break
        with self.lock:
            self.conns.append(conn)
        statements: dict[bytes, str] = {}
        portals: dict[bytes, str | None] = {}
        while True:
            if not need(5):
                return
            kind = bytes(buf[:1])
            (length,) = struct.unpack("!I", bytes(buf[1:5]))
            if not need(1 + length):
                return
            body = bytes(buf[5 : 1 + length])
            server.sendall(bytes(buf[: 1 + length]))
            del buf[: 1 + length]
            with self.lock:
                if kind == b"Q":
                    conn.round_trips += 1
                    conn.count(body.rstrip(b"\0").decode(errors="replace"), executes=True)
                elif kind == b"P":
                    name, rest = body.split(b"\0", 1)
                    statements[name] = rest.split(b"\0", 1)[0].decode(errors="replace")
                elif kind == b"B":
                    portal, stmt, _ = body.split(b"\0", 2)
                    portals[portal] = statements.get(stmt)
                elif kind == b"E":
                    conn.count(portals.get(body.split(b"\0", 1)[0]), executes=True)
                elif kind == b"S":
                    conn.round_trips += 1
                elif kind == b"X":
                    return


# -- PostgreSQL ------------------------------------------------------------------------------------
def _admin(base: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{base}/postgres", connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


class PgServer:
    """``HPARAM_JOBLIB_TEST_PG_URL``'s server, or a throwaway one (scripts/pg_throwaway.sh)."""

    def __enter__(self) -> str:
        self.dir: str | None = None
        base = os.environ.get("HPARAM_JOBLIB_TEST_PG_URL", "").rstrip("/")
        if base:
            return base
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="hj-dbload-pg-")
        out = subprocess.run(["bash", str(REPO / "scripts" / "pg_throwaway.sh"), "start", self.dir, str(port)],
                             capture_output=True, text=True, check=False, timeout=240)
        if out.returncode != 0:
            raise SystemExit(f"could not start PostgreSQL: {out.stderr[-1500:]}")
        return out.stdout.strip().split("=", 1)[1]

    def __exit__(self, *exc: object) -> None:
        if self.dir:
            subprocess.run(["bash", str(REPO / "scripts" / "pg_throwaway.sh"), "stop", self.dir],
                           capture_output=True, check=False, timeout=120)


def _host_port(base: str) -> tuple[str, int, str]:
    """Host, port and user of ``postgresql://user@host:port``."""
    rest = base.split("://", 1)[1]
    user, _, hostport = rest.rpartition("@")
    host, _, port = hostport.partition(":")
    return host, int(port or 5432), user


# -- the runs ----------------------------------------------------------------------------------------
OURS = """\
from hparam_joblib import hparam_search, report


@hparam_search(config_path="config/db_load.yaml")
def train(config):
    value = (config["x"] - 1.0) ** 2 + (config["y"] + 2.0) ** 2
    for step in range(config["reports"]):
        report(value + 1.0 / (step + 1), step)
    if config["sleep_s"]:
        import time
        time.sleep(config["sleep_s"])
    return value


if __name__ == "__main__":
    train()
"""

OURS_CONFIG = """\
experiment_name: "db_load"
tag: "default"
direction: "minimize"
n_jobs: 1
n_trials: 24
seed: 0
heartbeat_interval: 10
reports: 0
sleep_s: 0
sweep_parameters:
  x: {type: "float", low: -5.0, high: 5.0}
  y: {type: "float", low: -5.0, high: 5.0}
"""

RECIPE = """\
import sys
import optuna

url, name, n_trials, reports, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial):
    x = trial.suggest_float("x", -5.0, 5.0)
    y = trial.suggest_float("y", -5.0, 5.0)
    value = (x - 1.0) ** 2 + (y + 2.0) ** 2
    for step in range(reports):
        trial.report(value + 1.0 / (step + 1), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


study = optuna.create_study(storage=url, study_name=name, load_if_exists=True, direction="minimize",
                            sampler=optuna.samplers.TPESampler(seed=seed))
study.optimize(objective, n_trials=n_trials)
"""


def _project(root: Path) -> Path:
    proj = root / "proj"
    (proj / "config").mkdir(parents=True, exist_ok=True)
    (proj / "train.py").write_text(OURS)
    (proj / "config" / "db_load.yaml").write_text(OURS_CONFIG)
    (proj / "recipe.py").write_text(RECIPE)
    return proj


#: The folder holding the ``hparam_joblib`` package measured (``--package-root``; default: this checkout).
PACKAGE_ROOT = [REPO]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT[0]), env.get("PYTHONPATH", "")]))
    env["PGSSLMODE"] = "disable"
    env.pop("HPARAM_JOBLIB_TEST_PG_URL", None)
    return env


def run_point(proxy: Proxy, base: str, proj: Path, framework: str, n_jobs: int, n_trials: int, reports: int,
              *, sleep_s: float = 0.0, heartbeat: float = 10.0) -> dict[str, Any]:
    """One run on a fresh database; the counts by role."""
    _, _, user = _host_port(base)
    dbname = f"dbload_{uuid.uuid4().hex[:10]}"
    _admin(base, f"CREATE DATABASE {dbname}")
    url = f"postgresql://{user + '@' if user else ''}127.0.0.1:{proxy.port}/{dbname}"
    proxy.take()
    t0 = time.time()
    launcher_pid: int | None = None
    try:
        if framework == "hparam_joblib":
            cmd = [PYTHON, "train.py", "--quiet", "--set", f"storage={url}", "--set", f"n_jobs={n_jobs}",
                   "--set", f"n_trials={n_trials}", "--set", f"reports={reports}", "--set", f"sleep_s={sleep_s}",
                   "--set", f"heartbeat_interval={heartbeat}"]
            if reports:  # Optuna's default pruner, as the recipe has (ours is none by default)
                cmd += ["--set", "pruner.type=median"]
            proc = subprocess.Popen(cmd, cwd=proj, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            launcher_pid = proc.pid
            out, _ = proc.communicate(timeout=900)
            codes = [proc.returncode]
            tails = [out[-1500:]]
        else:
            # The study first, in one process (as Optuna's docs do with ``optuna create-study``):
            # N processes creating the schema at once collide (duplicate type "studydirection").
            setup = subprocess.Popen([PYTHON, "recipe.py", url, "db_load", "0", str(reports), "0"], cwd=proj,
                                     env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            launcher_pid = setup.pid  # counted apart, as our launcher is
            setup_out, _ = setup.communicate(timeout=300)
            if setup.returncode != 0:
                raise SystemExit(f"the recipe's study creation failed:\n{setup_out[-1500:]}")
            procs = [subprocess.Popen([PYTHON, "recipe.py", url, "db_load", str(n_trials // n_jobs), str(reports), str(i)],
                                      cwd=proj, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for i in range(n_jobs)]
            outs = [p.communicate(timeout=900)[0] for p in procs]
            codes = [p.returncode for p in procs]
            tails = [o[-1500:] for o in outs]
        wall = time.time() - t0
        time.sleep(0.5)  # the last bytes of closing connections
        conns = proxy.take()
        finished = _finished(base, dbname)
    finally:
        _admin(base, f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
    if any(codes):
        raise SystemExit(f"{framework} n_jobs={n_jobs} failed: exit {codes}\n{tails[0]}")
    roles: dict[str, dict[str, Any]] = {}
    for c in conns:
        role = "launcher" if launcher_pid is not None and c.pid == launcher_pid else "workers"
        r = roles.setdefault(role, {"connections": 0, "round_trips": 0, "statements": 0, "begins": 0,
                                    "commits": 0, "rollbacks": 0, "by_shape": Counter(), "pids": set()})
        r["connections"] += 1
        r["pids"].add(c.pid)
        for k in ("round_trips", "statements", "begins", "commits", "rollbacks"):
            r[k] += getattr(c, k)
        r["by_shape"].update(c.by_shape)
    for r in roles.values():
        r["pids"] = len(r["pids"])
        r["by_shape"] = dict(r["by_shape"].most_common())
    return {"framework": framework, "n_jobs": n_jobs, "n_trials": n_trials, "reports": reports, "sleep_s": sleep_s,
            "heartbeat_interval": heartbeat, "wall_s": wall, "finished": finished, "roles": roles}


def _finished(base: str, dbname: str) -> dict[str, int]:
    import psycopg2

    conn = psycopg2.connect(f"{base}/{dbname}", connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT state, count(*) FROM trials GROUP BY state")
            return {str(s): int(n) for s, n in cur.fetchall()}
    finally:
        conn.close()


def _role(point: dict[str, Any], role: str, key: str) -> int:
    return int(point["roles"].get(role, {}).get(key, 0))


def derive(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """Per trial and fixed costs of the workers; the launcher's (or the recipe's set-up's) statements."""
    dn = large["n_trials"] - small["n_trials"]
    out: dict[str, Any] = {}
    for key in ("statements", "round_trips", "commits"):
        per = (_role(large, "workers", key) - _role(small, "workers", key)) / dn
        out[f"{key}_per_trial"] = per
        out[f"{key}_fixed"] = _role(small, "workers", key) - per * small["n_trials"]
    for key in ("statements", "round_trips"):
        out[f"launcher_{key}_small"] = _role(small, "launcher", key)
    return out


def time_points(proxy: Proxy, base: str, proj: Path) -> dict[str, Any]:
    """What grows with time, not trials (hparam_joblib): 4 trials at n_jobs 2 that sleep 8 s with
    a 1 s heartbeat (``beating``), the same with a 1000 s heartbeat (``quiet``: no beat), and 4
    trials of 2 s with a 1000 s heartbeat (``short``). Per heartbeat of a running trial:
    (beating - quiet) workers / 32 trial-seconds. The launcher's polling per second: (quiet -
    short) launcher / their wall-time difference (same trials, same fixed cost)."""
    beating = run_point(proxy, base, proj, "hparam_joblib", 2, 4, 0, sleep_s=8.0, heartbeat=1.0)
    quiet = run_point(proxy, base, proj, "hparam_joblib", 2, 4, 0, sleep_s=8.0, heartbeat=1000.0)
    short = run_point(proxy, base, proj, "hparam_joblib", 2, 4, 0, sleep_s=2.0, heartbeat=1000.0)
    trial_s = 4 * 8.0
    dt = quiet["wall_s"] - short["wall_s"]
    out: dict[str, Any] = {"runs": [beating, quiet, short]}
    for key in ("statements", "round_trips", "commits"):
        out[f"{key}_per_heartbeat"] = (_role(beating, "workers", key) - _role(quiet, "workers", key)) / trial_s
        out[f"launcher_{key}_per_s"] = (_role(quiet, "launcher", key) - _role(short, "launcher", key)) / dt
        out[f"workers_{key}_per_s_no_beat"] = (_role(quiet, "workers", key) - _role(short, "workers", key)) / dt
    return out


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="n_jobs 1, plain objective only")
    p.add_argument("--run-name", default="db_load")
    p.add_argument("--no-heartbeat-run", action="store_true", help="skip the run that measures heartbeats")
    p.add_argument("--frameworks", default="hparam_joblib,optuna_recipe")
    p.add_argument("--n-jobs", default=None, help="comma-separated (default 1,8; --quick: 1)")
    p.add_argument("--objectives", default=None, help="plain,report (default both; --quick: plain)")
    p.add_argument("--package-root", default=None,
                   help="measure the hparam_joblib package in this folder (e.g. an older commit's, from git archive)")
    args = p.parse_args()
    if args.package_root:
        PACKAGE_ROOT[0] = Path(args.package_root).resolve()
    n_jobs_list = [int(x) for x in (args.n_jobs or ("1" if args.quick else "1,8")).split(",")]
    objectives = (args.objectives or ("plain" if args.quick else "plain,report")).split(",")
    frameworks = args.frameworks.split(",")
    out_dir = HERE / "results" / args.run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load0 = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hj-dbload-") as tmp, PgServer() as base:
        host, port, _ = _host_port(base)
        proxy = Proxy(host, port)
        proj = _project(Path(tmp))
        for objective in objectives:
            reports = 2 if objective == "report" else 0
            for n_jobs in n_jobs_list:
                for fw in frameworks:
                    small = run_point(proxy, base, proj, fw, n_jobs, SMALL, reports)
                    large = run_point(proxy, base, proj, fw, n_jobs, LARGE, reports)
                    d = derive(small, large)
                    row = {"framework": fw, "objective": objective, "n_jobs": n_jobs, **d, "runs": [small, large]}
                    rows.append(row)
                    print(f"{fw:14s} {objective:6s} n_jobs={n_jobs}: {d['statements_per_trial']:.2f} stmts/trial, "
                          f"{d['round_trips_per_trial']:.2f} round trips/trial, {d['commits_per_trial']:.2f} commits/trial "
                          f"(walls {small['wall_s']:.1f}/{large['wall_s']:.1f} s)", flush=True)
        hb = None
        if not args.no_heartbeat_run and "hparam_joblib" in frameworks:
            hb = time_points(proxy, base, proj)
            print(f"heartbeat: {hb['statements_per_heartbeat']:.2f} statements, {hb['round_trips_per_heartbeat']:.2f} "
                  f"round trips per running trial per interval; launcher polling: {hb['launcher_statements_per_s']:.2f} "
                  f"statements/s, {hb['launcher_round_trips_per_s']:.2f} round trips/s; workers without beats: "
                  f"{hb['workers_statements_per_s_no_beat']:.2f} statements/s", flush=True)
    load1 = os.getloadavg()
    print()
    print("| objective | who | n_jobs | statements / trial | round trips / trial | commits / trial "
          "| fixed statements / launch (workers) | launcher or set-up: statements (24-trial run) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        who = "hparam_joblib loops" if r["framework"] == "hparam_joblib" else "Optuna recipe (N processes)"
        print(f"| {r['objective']} | {who} | {r['n_jobs']} | {r['statements_per_trial']:.2f} | "
              f"{r['round_trips_per_trial']:.2f} | {r['commits_per_trial']:.2f} | {r['statements_fixed']:.0f} | "
              f"{r['launcher_statements_small']} |")
    result = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "loadavg_start": load0, "loadavg_end": load1, "cpus": os.cpu_count(), "python": platform.python_version(),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True, check=False).stdout.strip(),
              "package_root": str(PACKAGE_ROOT[0]), "rows": rows, "time_points": hb}
    (out_dir / "db_load.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {out_dir / 'db_load.json'}; load {load0[0]:.1f} -> {load1[0]:.1f}")


if __name__ == "__main__":
    main()
