"""Finding the filesystem of a path from mountinfo lines as the kernel writes them (proc(5))."""

from __future__ import annotations

from pathlib import Path

from hparam_joblib.storage._netfs import containing, parse_mountinfo

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
40 27 0:45 / /home rw,relatime shared:20 - nfs4 fs01:/export/home rw,vers=4.2,rsize=1048576
41 27 0:46 / /scratch rw,relatime - lustre 10.0.0.1@o2ib:/scratch rw,flock
42 40 8:2 / /home/alice/local\040disk rw,relatime - xfs /dev/sdb1 rw
43 27 0:47 / /gpfs rw,relatime - gpfs gpfs0 rw
44 27 0:48 / /gpfs rw,relatime - tmpfs tmpfs rw
"""


def test_the_deepest_mount_holding_the_path_decides() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.fstype for m in mounts] == ["proc", "ext4", "nfs4", "lustre", "xfs", "gpfs", "tmpfs"]
    home = containing("/home/alice/project/optuna_studies/x.db", mounts)
    assert home is not None and home.network and home.describe() == "nfs4 (fs01:/export/home on /home)"
    scratch = containing("/scratch/run1/x.journal", mounts)
    assert scratch is not None and scratch.fstype == "lustre" and scratch.network
    local = containing("/home/alice/local disk/studies/x.db", mounts)  # \040 is a space
    assert local is not None and local.fstype == "xfs" and not local.network
    assert containing("/homework/x.db", mounts).fstype == "ext4"  # type: ignore[union-attr]
    # Two mounts on one point: the later one hides the earlier.
    assert containing("/gpfs/x.db", mounts).fstype == "tmpfs"  # type: ignore[union-attr]


def test_this_machines_temporary_directory_is_local(tmp_path: Path) -> None:
    from hparam_joblib.storage._netfs import network_mount

    assert network_mount(tmp_path / "not" / "yet" / "x.db") is None


def test_the_setting_is_true_or_false(tmp_path: Path) -> None:
    import pytest

    from hparam_joblib import ConfigError
    from hparam_joblib.config._load import load_config
    from hparam_joblib.config._overrides import parse_override

    path = tmp_path / "c.yaml"
    path.write_text("n_trials: 3\nsweep_parameters:\n  x: {type: float, low: 0, high: 1}\n")
    assert load_config(path, [], cpu_count=2)[0].allow_network_filesystem is False
    cfg, _ = load_config(path, [parse_override("allow_network_filesystem=true")], cpu_count=2)
    assert cfg.allow_network_filesystem is True
    assert "allow_network_filesystem" not in cfg.fixed  # a setting, not a parameter of train()
    with pytest.raises(ConfigError) as info:
        load_config(path, [parse_override("allow_network_filesystem=yes please")], cpu_count=2)
    assert "allow_network_filesystem: must be true or false, got 'yes please'" in str(info.value)
