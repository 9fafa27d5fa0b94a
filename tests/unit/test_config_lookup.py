"""Where the config file is looked for beyond the working directory (issue 23, item 9): the
folder holding the defining module's top-level package, and the folder of the script run."""

from __future__ import annotations

from pathlib import Path

import pytest

from hparam_joblib.config._load import package_root, resolve_config_path


@pytest.mark.parametrize(
    ("module", "file", "root"),
    [
        ("mypkg.train", "proj/mypkg/train.py", "proj"),
        ("mypkg.sub.train", "proj/src/mypkg/sub/train.py", "proj/src"),
        ("mypkg", "proj/mypkg/__init__.py", "proj"),
        ("mypkg.sub", "proj/mypkg/sub/__init__.py", "proj"),
        ("__main__", "proj/train.py", None),
        ("train", "proj/train.py", None),
    ],
)
def test_package_root(tmp_path: Path, module: str, file: str, root: str | None) -> None:
    """The folder that holds the top-level package; None for a top-level module or a script."""
    got = package_root(module, str(tmp_path / file))
    assert got == (None if root is None else tmp_path / root)


def test_lookup_order_after_the_defining_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside the defining module first, then the package's folder, then the script's folder;
    the error lists every place tried."""
    monkeypatch.chdir(tmp_path)
    module = tmp_path / "proj" / "src" / "mypkg" / "train.py"
    module.parent.mkdir(parents=True)
    script = tmp_path / "proj" / "run.py"
    places = [module.parent / "config" / "c.yaml", tmp_path / "proj" / "src" / "config" / "c.yaml",
              tmp_path / "proj" / "config" / "c.yaml"]
    for place in reversed(places):
        place.parent.mkdir(parents=True, exist_ok=True)
        place.write_text("n_trials: 1\n")
        assert resolve_config_path("c.yaml", str(module), str(script), tmp_path / "proj" / "src") == place
    for place in places:
        place.unlink()
    with pytest.raises(Exception, match="config file not found; tried: ") as info:
        resolve_config_path("c.yaml", str(module), str(script), tmp_path / "proj" / "src")
    assert str(tmp_path / "proj" / "config" / "c.yaml") in str(info.value)
