"""Is a study file on a network filesystem? (NFS, Lustre, GPFS, CIFS, BeeGFS, sshfs, ...)

A SQLite file or a journal on a filesystem that several machines share is what a cluster user
tries first, and where it breaks: SQLite's POSIX locks and our ``flock`` may not hold there (NFS
maps ``flock`` onto byte-range locks served by a lock daemon, CIFS and many FUSE filesystems
ignore or emulate them), and SQLite's WAL mode keeps an index in shared memory that processes on
*other* machines cannot see, so two machines writing one file can corrupt it. On *one* machine
the shared memory works (all processes share that machine's page cache) and only the locks'
reliability remains, which depends on the server and mount options: a risk we do not take
silently. So the search stops before anything is created and says where the file is and the two
ways out (a local disk for a one-machine search, PostgreSQL for several); the
``allow_network_filesystem: true`` setting goes on anyway, for one machine only.

The filesystem is read from ``/proc/self/mountinfo`` (Linux; elsewhere nothing is detected):
the mount that holds the nearest existing directory of the path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Filesystem types (``mountinfo``'s type field) whose files other machines share.
NETWORK_TYPES: frozenset[str] = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "coda", "9p",
    "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "panfs", "pvfs2", "orangefs", "ocfs2", "gfs2",
    "wekafs", "davfs", "virtiofs",
    "fuse.sshfs", "fuse.glusterfs", "fuse.ceph-fuse", "fuse.beegfs", "fuse.s3fs", "fuse.gcsfuse",
    "fuse.rclone", "fuse.juicefs", "fuse.goofys", "fuse.davfs2", "fuse.lizardfs", "fuse.mfs",
})


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo``."""

    point: str
    fstype: str
    source: str

    @property
    def network(self) -> bool:
        return self.fstype in NETWORK_TYPES

    def describe(self) -> str:
        return f"{self.fstype} ({self.source} on {self.point})"


def _unescape(field: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as ``\040``-style octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``mountinfo`` text, in its order (a later mount on a point hides an earlier)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append(Mount(point=_unescape(fields[4]), fstype=tail[0], source=_unescape(tail[1])))
    return mounts


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount holding ``path`` (its nearest existing directory, symlinks resolved)."""
    where = Path(os.path.abspath(path))
    while not where.exists() and where != where.parent:
        where = where.parent
    return containing(os.path.realpath(where), mounts)


def containing(target: str, mounts: list[Mount]) -> Mount | None:
    """The mount whose point is the deepest prefix of the absolute path ``target`` (the last
    such line when several mounts share a point)."""
    best: Mount | None = None
    for mount in mounts:
        point = mount.point.rstrip("/") or "/"
        inside = target == point or target.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.point.rstrip("/") or "/")):
            best = mount
    return best


def network_mount(path: Path) -> Mount | None:
    """The network filesystem ``path`` is on, or None (a local one, or not Linux)."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    mount = mount_of(path, parse_mountinfo(text))
    return mount if mount is not None and mount.network else None
