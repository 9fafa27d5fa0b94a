"""Find the configuration file, read its YAML, and turn it with the ``--set`` items into a config.

:func:`load_config` is the one entry point: read, pins, overrides, typo notes, then
:func:`~hparam_joblib.config._validate.validate`. Nothing here touches a study or creates a file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from hparam_joblib._errors import ConfigError
from hparam_joblib.config._checker import Checker
from hparam_joblib.config._devices import GpuDetector
from hparam_joblib.config._overrides import Override, apply_overrides
from hparam_joblib.config._pins import apply_pins, split_pins
from hparam_joblib.config._schema import RESERVED_KEYS, SearchConfig
from hparam_joblib.config._switch import drop_old_settings, open_blocks
from hparam_joblib.config._typos import (
    allowed_keys,
    check_file_typos,
    check_new_key_typos,
    listed,
    typo_notes,
)
from hparam_joblib.config._validate import validate
from hparam_joblib.config._yaml import load_yaml


def resolve_config_path(
    config_path: str | os.PathLike[str],
    defining_file: str | None,
    script_file: str | None = None,
    package_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Find the configuration file.

    Tried in order: the path as given (absolute, or relative to the working directory);
    ``config/<path>`` under the working directory; ``config/<path>``, then ``<path>``, beside the
    file that defines the decorated function; the same in ``package_root``, the directory that
    holds the top-level package of that file (a function defined in ``project/mypkg/train.py``:
    ``project/``); the same beside ``script_file``, the script that was run (a package's entry
    script started from another directory).

    Raises:
        ConfigError: no candidate exists; the message lists every place tried.
    """
    given = Path(config_path)
    candidates = [given]
    if not given.is_absolute():
        candidates.append(Path("config") / given)
        anchors = [Path(defining_file).resolve().parent] if defining_file else []
        if package_root is not None:
            anchors.append(Path(package_root).resolve())
        if script_file:
            anchors.append(Path(script_file).resolve().parent)
        for here in anchors:
            candidates += [here / "config" / given, here / given]
    seen: list[Path] = []
    for candidate in candidates:
        if candidate in seen:
            continue
        seen.append(candidate)
        if candidate.is_file():
            return candidate
    # Absolute paths: a relative one means nothing without the working directory.
    tried = ", ".join(str(p if p.is_absolute() else Path.cwd() / p) for p in seen)
    raise ConfigError(str(config_path), "", f"config file not found; tried: {tried}")


def package_root(module_name: str, defining_file: str | None) -> Path | None:
    """The directory that holds the top-level package of module ``pkg.sub.train`` defined in
    ``defining_file`` (``None`` for a top-level module or script: nothing above it)."""
    if not defining_file:
        return None
    path = Path(defining_file).resolve()
    depth = module_name.count(".") + (path.stem == "__init__")  # a package's __init__.py: one deeper
    if not depth or module_name in ("__main__", "__mp_main__"):
        return None
    return path.parents[depth] if depth < len(path.parents) else None


def read_raw(path: Path) -> dict[str, Any]:
    """Read the YAML file into a mapping (safe loader only).

    Raises:
        ConfigError: unreadable file, YAML syntax error (with line and column), a tag that the
            safe loader refuses (``!!python/object``), or a top level that is not a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(path, "", f"cannot read the file ({err})") from err
    try:
        data = load_yaml(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = (err.problem or err.context or "invalid YAML").strip()
        kind = "YAML syntax error"
        if isinstance(err, yaml.constructor.ConstructorError):  # well-formed, but not allowed
            kind = "YAML error"
            if "could not determine a constructor" in problem:
                problem += " (only plain YAML is allowed; Python tags are never executed)"
        raise ConfigError(path, "", f"{kind}{where}: {problem}") from err
    except yaml.YAMLError as err:
        raise ConfigError(path, "", f"YAML error: {str(err).splitlines()[0]}") from err
    if data is None:
        raise ConfigError(path, "", "the file is empty; expected a mapping of settings")
    if not isinstance(data, dict):
        raise ConfigError(
            path, "", f"the top level must be a mapping of key: value, got a {type(data).__name__}"
        )
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(path, str(key), "keys must be strings")
    return data


def load_config(
    path: Path, overrides: list[Override], cpu_count: int, detect_gpus: GpuDetector | None = None
) -> tuple[SearchConfig, list[str]]:
    """Read, override and validate a configuration.

    Args:
        path: the YAML file (already resolved).
        overrides: parsed ``--set`` items, applied before validation.
        cpu_count: what ``n_jobs: -1`` means on this machine.
        detect_gpus: what ``gpus: auto`` means on this machine (see :func:`validate`).

    Returns:
        The validated configuration, and notes for the user (keys created by ``--set``,
        likely typos of reserved keys).

    Raises:
        ConfigError: anything wrong in the file or the overrides.
    """
    raw = read_raw(path)
    check = Checker(str(path), tuple(overrides))
    pins, rest = split_pins(raw, overrides)
    check_new_key_typos(raw, rest, path, listed(raw))
    resolved, created = apply_overrides(open_blocks(raw, rest), rest)
    resolved, notes = drop_old_settings(raw, resolved, rest)
    # Documented settings (and anything under them) are never "new keys", in the file or not.
    notes += [
        f"--set {key}: not in {path.name}; added it as a new key"
        for key in created if key.split(".")[0] not in RESERVED_KEYS
    ]
    resolved, pin_notes = apply_pins(resolved, pins, check)
    notes += pin_notes
    allowed = allowed_keys(resolved, check)
    check_file_typos(raw, resolved, allowed, check)
    notes += typo_notes(resolved, path, allowed)
    cfg = validate(resolved, str(path), cpu_count, tuple(overrides), detect_gpus)
    if cfg.sampler.type == "grid":
        points = math.prod(len(values) for _, values in cfg.sampler.grid)
        if points < cfg.n_trials:
            notes.append(
                f"{path.name}: the grid has {points} points but n_trials is {cfg.n_trials}; "
                f"the last {cfg.n_trials - points} trials repeat grid points"
            )
    return cfg, notes
