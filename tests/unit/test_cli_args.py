"""Unit tests for the decorated script's flags (hparam_joblib._cli.parse_args)."""

from __future__ import annotations

from typing import Any

import pytest

from hparam_joblib._cli import ScriptArgs, parse_args
from hparam_joblib._errors import ConfigError, HparamError, OverrideError, UsageError


@pytest.mark.parametrize(
    ("argv", "sets", "config", "dry_run"),
    [
        ([], [], None, False),
        (["--set", "n_trials=200"], [(("n_trials",), 200)], None, False),
        (["--set", "model.first_layer.bias=False"], [(("model", "first_layer", "bias"), False)], None, False),
        (["--set", "n_jobs=16", "tag=second_sweep"], [(("n_jobs",), 16), (("tag",), "second_sweep")], None, False),
        (
            ["--set", "a=1", "--set", "b=2", "c=3"],
            [(("a",), 1), (("b",), 2), (("c",), 3)],
            None,
            False,
        ),
        (["--set=lr=1e-3"], [(("lr",), 0.001)], None, False),
        (["--set", "lr=-1e-3"], [(("lr",), -0.001)], None, False),
        (["--set", "layers=[1, 2]"], [(("layers",), [1, 2])], None, False),
        (["--config", "config/cifar10_exp.yaml"], [], "config/cifar10_exp.yaml", False),
        (["--config=other.yaml"], [], "other.yaml", False),
        (["--dry-run"], [], None, True),
        (
            ["--dry-run", "--set", "n_trials=1", "--config", "x.yaml", "--set", "tag=t"],
            [(("n_trials",), 1), (("tag",), "t")],
            "x.yaml",
            True,
        ),
        (["--set", "a=1", "--set", "a=2"], [(("a",), 1), (("a",), 2)], None, False),
    ],
)
def test_parse_args(argv: list[str], sets: list[tuple[tuple[str, ...], Any]], config: str | None, dry_run: bool) -> None:
    """--set (repeatable, several items each), --config and --dry-run parse in order."""
    args = parse_args(argv)
    assert isinstance(args, ScriptArgs)
    assert [(o.path, o.value) for o in args.overrides] == sets
    assert [o.key for o in args.overrides] == [".".join(path) for path, _ in sets]
    assert args.config == config
    assert args.dry_run is dry_run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], r"^unrecognized arguments: --bogus \(see --help\)$"),
        (["--set", "a=1", "--nope", "x"], r"^unrecognized arguments: --nope x \(see --help\)$"),
        (["stray"], r"^unrecognized arguments: stray \(see --help\)$"),
        (["--set"], r"^argument --set: expected at least one argument \(see --help\)$"),
        (["--config"], r"^argument --config: expected one argument \(see --help\)$"),
        (["--dry-run=yes"], r"argument --dry-run: ignored explicit argument 'yes' \(see --help\)$"),
    ],
)
def test_bad_flags_raise_one_line_usage_error(argv: list[str], message: str) -> None:
    """A bad flag is a one-line UsageError (exit 2 in the CLI), never argparse's SystemExit."""
    with pytest.raises(UsageError, match=message) as info:
        parse_args(argv)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, HparamError)
    assert not isinstance(info.value, ConfigError)


@pytest.mark.parametrize(
    ("argv", "text", "message"),
    [
        (["--set", "n_trials"], "n_trials", r"expected key=value"),
        (["--set", "a=1", "b"], "b", r"expected key=value"),
        (["--set", "=3"], "=3", r"the key before '=' is empty"),
        (["--set", "a..b=3"], "a..b=3", r"has an empty part"),
        (["--set", "x=[1"], "x=[1", r"value is not valid YAML"),
    ],
)
def test_bad_set_items_raise_override_error(argv: list[str], text: str, message: str) -> None:
    """A malformed --set item is an OverrideError carrying the raw item."""
    with pytest.raises(OverrideError, match=message) as info:
        parse_args(argv)
    assert info.value.text == text


def test_help_exits_zero_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints the flags and the guide's examples, then exits 0."""
    with pytest.raises(SystemExit) as info:
        parse_args(["--help"], prog="your_script.py")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: your_script.py")
    for flag in ("--set", "--config", "--dry-run", "model.first_layer.bias=False", "tag=second_sweep"):
        assert flag in out


def test_override_keeps_raw_text() -> None:
    """Each parsed item keeps the raw text for error messages, also in the --set=... form."""
    args = parse_args(["--set=lr=1e-3", "--set", "tag=second_sweep", "model.bias=False"])
    assert [o.text for o in args.overrides] == ["lr=1e-3", "tag=second_sweep", "model.bias=False"]


@pytest.mark.parametrize(
    ("argv", "best", "verbosity"),
    [
        ([], False, None),
        (["--best"], True, None),
        (["--quiet"], False, "quiet"),
        (["-q"], False, "quiet"),
        (["--verbose"], False, "verbose"),
        (["-v", "--best", "--set", "data.epochs=3"], True, "verbose"),
    ],
)
def test_best_quiet_verbose_flags(argv: list[str], best: bool, verbosity: str | None) -> None:
    """--best retrains; --quiet / --verbose set the verbosity (None: the file's)."""
    args = parse_args(argv)
    assert (args.best, args.verbosity) == (best, verbosity)


def test_quiet_and_verbose_together_is_a_usage_error() -> None:
    """--quiet and --verbose contradict each other: one line."""
    with pytest.raises(UsageError, match="not allowed with argument"):
        parse_args(["--quiet", "--verbose"])
