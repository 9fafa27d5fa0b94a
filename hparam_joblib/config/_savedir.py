"""Where the study database goes: a relative ``save_db_directory`` belongs to the project.

The rule (documented in the README): an absolute ``save_db_directory`` is used as it is; a
relative one is resolved against the *project directory* of the config file that was found,
not against the working directory: the directory that holds the file, or its parent when that
directory is named ``config`` or ``configs`` (the guide's layout: ``your_project/config/config.yaml``
beside ``your_project/optuna_studies/``; ``configs/`` is as common a name). So the same command finds the same study from any working
directory, and two copies of a project keep two studies.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Names of a project's folder of config files (the database goes beside the folder, not in it).
CONFIG_DIRS = ("config", "configs")


def project_dir(config_file: Path) -> Path:
    """The project directory of a config file (see the module docstring)."""
    here = config_file.resolve().parent
    return here.parent if here.name in CONFIG_DIRS else here


def resolve_save_dir(save_db_directory: str | os.PathLike[str], config_file: Path) -> tuple[Path, str]:
    """The absolute save directory, and why (for ``--dry-run`` and the summary)."""
    given = Path(save_db_directory).expanduser()
    if given.is_absolute():
        return given, "save_db_directory is absolute"
    base = project_dir(config_file)
    shown = _shown(config_file.resolve(), base)
    return (base / given).resolve(), (
        f"save_db_directory {str(save_db_directory)!r} is relative to the project directory {base} "
        f"of {shown}, whatever the working directory"
    )


def _shown(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
