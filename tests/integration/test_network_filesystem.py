"""A study file on a network filesystem is refused before anything is created (#19 item 4), on a
real one: sshfs (FUSE over SFTP, type ``fuse.sshfs``) of a local directory, mounted by the test
as root (``sshfs`` and ``openssh-sftp-server`` are installed with apt-get if missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SCRIPT, Project, search_config, states

pytestmark = pytest.mark.slow


def _sshfs_available() -> str:
    if os.geteuid() != 0 or not Path("/dev/fuse").exists():
        return "needs root and /dev/fuse"
    if shutil.which("sshfs") is None or not Path("/usr/lib/openssh/sftp-server").exists():
        done = subprocess.run(["apt-get", "install", "-y", "-q", "sshfs", "openssh-sftp-server"],
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0 or shutil.which("sshfs") is None:
            return f"cannot install sshfs: {done.stderr.strip()[-300:]}"
    return ""


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory mounted with sshfs from another directory: what a cluster's shared home is."""
    why = _sshfs_available()
    if why:
        if os.environ.get("HPARAM_JOBLIB_REQUIRE_SSHFS") == "1":
            pytest.fail(f"sshfs is required (HPARAM_JOBLIB_REQUIRE_SSHFS=1) but {why}")
        pytest.skip(why)
    export, mount = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mount.mkdir()
    sftp = tmp_path / "sftp.sh"  # sshfs talks SFTP to this server directly, no sshd
    sftp.write_text("#!/bin/sh\nexec /usr/lib/openssh/sftp-server\n")
    sftp.chmod(0o755)
    subprocess.run(["sshfs", "-o", f"ssh_command={sftp}", f"localhost:{export}", str(mount)],
                   check=True, timeout=60)
    try:
        yield mount
    finally:
        subprocess.run(["fusermount", "-u", "-z", str(mount)], check=False, timeout=60)


def _project_on(root: Path, **settings: object) -> Project:
    project = Project(root)
    project.script.write_text(SCRIPT)
    project.write_config(search_config(n_jobs=2, n_trials=6, **settings))
    return project


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_a_study_file_on_a_network_filesystem_is_refused_in_one_line(shared: Path, storage: str) -> None:
    """The project (and so ./optuna_studies) on sshfs: exit 2, one line naming the file, the
    filesystem and the ways out, and nothing created."""
    project = _project_on(shared, storage=None if storage == "sqlite" else f"journal:{shared / 'studies' / 'x.journal'}")
    before = project.snapshot()
    done = project.run()
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "is on a network filesystem, fuse.sshfs (localhost:" in line
    assert "local disk" in line and "postgresql://" in line and "allow_network_filesystem: true" in line
    assert project.snapshot() == before
    assert not (shared / "optuna_studies").exists() and not (shared / "studies").exists()


def test_allowed_it_runs_from_one_machine_with_a_warning(shared: Path) -> None:
    """allow_network_filesystem: true: one warning line, then the search runs to the exact count."""
    project = _project_on(shared, allow_network_filesystem="true", sleep=0.05)
    done = project.run()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is on a network filesystem, fuse.sshfs" in done.stderr and "one machine only" in done.stderr
    assert states(project.db("exp_t")) == {"COMPLETE": 6}
