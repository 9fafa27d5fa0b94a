"""Unit tables for the scale-out keys: backend, dask_scheduler, storage, gpus, max_worker_deaths,
heartbeat_interval; and that no password in a storage URL is ever shown or stored."""

from __future__ import annotations

from typing import Any

import pytest

from hparam_joblib._errors import ConfigError, OverrideError, redact_secrets
from hparam_joblib.config._load import load_config
from hparam_joblib.config._overrides import parse_override
from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.config._validate import validate
from hparam_joblib.storage._location import StorageSpec, parse_storage, redact_url

SRC = "config.yaml"


def check(**extra: Any) -> SearchConfig:
    raw: dict[str, Any] = {"n_trials": 8, "sweep_parameters": {"x": {"type": "float", "low": 0, "high": 1}}}
    raw.update(extra)
    return validate(raw, SRC, cpu_count=2)


def test_defaults_are_loky_and_the_sqlite_file() -> None:
    cfg = check()
    assert (cfg.backend, cfg.dask_scheduler, cfg.storage, cfg.gpus) == ("loky", "local", StorageSpec(), ())
    assert (cfg.max_worker_deaths, cfg.heartbeat_interval, cfg.n_jobs) == (3, 10.0, 1)
    for key in ("backend", "storage", "gpus", "dask_scheduler", "max_worker_deaths", "heartbeat_interval"):
        assert key not in cfg.fixed  # study settings, not passed to the training function


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"backend": "dask"}, ("dask", "local")),
        ({"backend": "Dask", "dask_scheduler": "tcp://10.0.0.5:8786"}, ("dask", "tcp://10.0.0.5:8786")),
        ({"backend": "loky", "dask_scheduler": "tls://h:8786"}, ("loky", "tls://h:8786")),
    ],
)
def test_backend_choices(extra: dict[str, Any], expected: tuple[str, str]) -> None:
    cfg = check(**extra)
    assert (cfg.backend, cfg.dask_scheduler) == expected


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ({"backend": "ray"}, "backend", "must be one of ['loky', 'dask'], got 'ray'"),
        ({"backend": 3}, "backend", "must be one of"),
        ({"dask_scheduler": "myhost:8786"}, "dask_scheduler", "tcp://host:8786"),
        ({"dask_scheduler": "tcp://"}, "dask_scheduler", "must be 'local' or a scheduler address"),
        ({"storage": "mysql://u@h/db"}, "storage", "unsupported storage scheme 'mysql'"),
        ({"storage": "postgres://u@h/db"}, "storage", "write postgresql://"),
        ({"storage": "postgresql://u:hunter2@h"}, "storage", "names no database"),
        ({"storage": "sqlite:///x.db"}, "storage", "leave storage unset"),
        ({"storage": 5}, "storage", "must be 'sqlite', a postgresql:// URL or journal:PATH"),
        ({"gpus": []}, "gpus", "non-empty list"),
        ({"gpus": [-1]}, "gpus", "integers >= 0"),
        ({"gpus": [True]}, "gpus", "integers >= 0"),
        ({"gpus": ["0,1"]}, "gpus", "integers >= 0"),
        ({"gpus": [0, 1], "n_jobs": 3}, "n_jobs", "3 trials would run at once but gpus lists 2 device(s)"),
        ({"max_worker_deaths": 0}, "max_worker_deaths", "integer >= 1"),
        ({"heartbeat_interval": 0}, "heartbeat_interval", "seconds > 0"),
    ],
)
def test_bad_scaleout_values_name_file_and_key(extra: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        check(**extra)
    assert info.value.key == key
    assert str(info.value).startswith(f"{SRC}: {key}: ")
    assert fragment in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, StorageSpec()),
        ("sqlite", StorageSpec()),
        ("journal", StorageSpec(kind="journal")),
        ("journal:/data/s.journal", StorageSpec(kind="journal", path="/data/s.journal")),
        ("postgresql://u@h:5432/db", StorageSpec(kind="postgresql", url="postgresql://u@h:5432/db")),
        ("postgresql+psycopg2://u:p@h/db", StorageSpec(kind="postgresql", url="postgresql+psycopg2://u:p@h/db")),
    ],
)
def test_storage_values(value: Any, expected: StorageSpec) -> None:
    assert parse_storage(value) == expected


def test_gpus_set_n_jobs_and_may_repeat_a_device() -> None:
    assert check(gpus=[0, 1, 2, 3]).n_jobs == 4
    assert check(gpus=[0, 1, 2, 3], n_jobs=2).gpus == ("0", "1", "2", "3")
    cfg = check(gpus=[0, 0, 1])
    assert (cfg.gpus, cfg.n_jobs) == (("0", "0", "1"), 3)
    assert check(gpus="GPU-8f2c").gpus == ("GPU-8f2c",)


def test_gpus_list_each_machines_devices_on_a_cluster() -> None:
    # On a remote Dask cluster every machine leases from the same list: 2 machines x [0, 1] = 4.
    cfg = check(gpus=[0, 1], n_jobs=4, backend="dask", dask_scheduler="tcp://h:8786")
    assert (cfg.gpus, cfg.n_jobs) == (("0", "1"), 4)
    with pytest.raises(ConfigError, match="n_jobs: 4 trials would run at once"):
        check(gpus=[0, 1], n_jobs=4, backend="dask", dask_scheduler="local")


def test_gpus_auto_reads_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    cfg = check(gpus="auto")
    assert (cfg.gpus, cfg.n_jobs) == (("2", "3"), 2)


def test_gpus_auto_without_a_gpu_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match=r"^config.yaml: gpus: auto found no GPU on this machine \(.*nvidia-smi"):
        check(gpus="auto")


def test_password_never_shown_nor_stored(tmp_path: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("n_trials: 3\nsweep_parameters:\n  x: {type: float, low: 0, high: 1}\n")
    url = "postgresql://bob:hunter2@db.example:5432/studies"
    cfg, _ = load_config(path, [parse_override(f"storage={url}")], cpu_count=2)
    assert cfg.storage.url == url  # kept for connecting
    assert cfg.storage.display == "postgresql://bob:***@db.example:5432/studies"
    assert cfg.resolved["storage"] == cfg.storage.display  # what the study records
    assert "hunter2" not in repr(cfg)
    # A bad value given with --set: the error quotes the --set text, without the password.
    with pytest.raises(ConfigError) as info:
        load_config(path, [parse_override("storage=postgresql://bob:hunter2@db.example")], cpu_count=2)
    assert "hunter2" not in str(info.value) and "bob:***@db.example" in str(info.value)


def test_redaction_helpers() -> None:
    assert redact_url("postgresql+psycopg2://u:p%40ss@h:1/d") == "postgresql+psycopg2://u:***@h:1/d"
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"
    assert redact_secrets("x postgresql://a:b@c/d y tcp://h:8786") == "x postgresql://a:***@c/d y tcp://h:8786"
    assert "pw" not in str(OverrideError("storage=postgresql://a:pw@h/d x", "bad"))


def test_public_url_names_the_installed_driver_and_drops_only_the_password() -> None:
    """What the summary prints for optuna-dashboard: the driver that the search used (psycopg 3
    from the `postgresql` extra for a bare URL; a named driver kept), no password, the rest kept."""
    from hparam_joblib.storage._location import StorageLocation

    pytest.importorskip("psycopg")
    bare = StorageLocation("postgresql", url="postgresql://bob:hunter2@db.example:5432/studies?sslmode=require")
    assert bare.public_url == "postgresql+psycopg://bob@db.example:5432/studies?sslmode=require"
    named = StorageLocation("postgresql", url="postgresql+psycopg2://bob:p%40ss@db.example/studies")
    assert named.public_url == "postgresql+psycopg2://bob@db.example/studies"
