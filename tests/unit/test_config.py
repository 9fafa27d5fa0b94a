"""Unit tests for YAML loading, validation and config-file search (hparam_joblib.config: _load, _validate, _yaml)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from hparam_joblib._errors import ConfigError, OverrideError
from hparam_joblib.config._load import load_config, read_raw, resolve_config_path
from hparam_joblib.config._overrides import parse_override
from hparam_joblib.config._schema import ParamSpec, SearchConfig
from hparam_joblib.config._validate import validate
from hparam_joblib.config._yaml import dump_yaml, load_yaml

SRC = "config.yaml"

GUIDE_YAML = """\
# config.yaml
# Configuration file for the hyperparameter search.

# --- Fixed Parameters ---
# These are passed to every trial without modification.
experiment_name: "ImageNet_exp"
tag: "first_sweep"
hidden_layers: 8

# --- Optuna Study Configuration ---
direction: "minimize"       # "minimize" a loss or "maximize" an accuracy
n_jobs: 8                   # Number of parallel jobs to run
n_trials: 100               # Total number of trials to run across all jobs
n_startup_trials: 20        # Number of initial random trials before TPE sampler takes over

# --- Hyperparameter Search Space (sweep_parameters) ---
# Defines the hyperparameters for Optuna to search over.
sweep_parameters:
  learning_rate: # Exaple of a floating-point parameter
    type: "float" 
    low: 5.0e-5
    high: 1.0e-2
    log: True # Use a logarithmic scale for sampling

  num_epochs: # Example of an integer parameter
    type: "int"
    low: 10
    high: 100
    step: 10

  optimizer: # Example of a categorical parameter
    type: "categorical"
    choices: ["Adam", "RMSprop", "SGD"]
"""


def base(**extra: Any) -> dict[str, Any]:
    """A minimal valid raw mapping, with ``extra`` keys merged in."""
    raw: dict[str, Any] = {"n_trials": 10}
    raw.update(extra)
    return raw


def with_param(spec: Any, name: str = "p", **extra: Any) -> dict[str, Any]:
    """A minimal raw mapping sweeping one parameter."""
    return base(sweep_parameters={name: spec}, **extra)


def check(raw: dict[str, Any]) -> SearchConfig:
    """Validate with the file name and CPU count the tests assume."""
    return validate(raw, SRC, cpu_count=2)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    """Write a YAML file under tmp_path and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- YAML loading -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-3", 0.001),
        ("5.0e-5", 5.0e-5),
        ("1.0e-2", 0.01),
        ("1E+5", 100000.0),
        ("1.0e5", 100000.0),
        ("-2e-4", -0.0002),
        ("+1e3", 1000.0),
        (".5", 0.5),
        ("-.5", -0.5),
        ("1.", 1.0),
        ("3", 3),
        ("True", True),
        ("false", False),
        ("null", None),
        ("'1e-3'", "1e-3"),
        ("1e", "1e"),
        ("e5", "e5"),
        ("1.2.3", "1.2.3"),
    ],
)
def test_load_yaml_scalars(text: str, expected: Any) -> None:
    """YAML 1.2 floats such as 1e-3 load as floats; other scalars keep their YAML type."""
    value = load_yaml(text)
    assert value == expected
    assert type(value) is type(expected)


def test_dump_yaml_keeps_order_and_round_trips() -> None:
    """dump_yaml keeps insertion order and load_yaml reads it back."""
    data = {"z": 1, "a": {"lr": 1e-3, "flag": False}, "l": [1, "x"]}
    text = dump_yaml(data)
    assert text.index("z:") < text.index("a:")
    assert load_yaml(text) == data


def test_python_tag_is_rejected_and_never_runs(tmp_path: Path) -> None:
    """A !!python/object/apply tag is a ConfigError and its payload does not run."""
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"n_trials: 1\nx: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"could not determine a constructor") as info:
        read_raw(path)
    assert not marker.exists()
    assert str(path) in str(info.value)
    assert "line 2, column 4" in str(info.value)
    assert "Python tags are never executed" in str(info.value)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("a: [1, 2\nb: 3\n", 2, 2),
        ("a: 1\n  b: 2\n", 2, 4),
        ("a: 1\nb: {c: 2\n", 3, 1),
        ("a: 'unterminated\n", 2, 1),
        ("a:\n\t- 1\n", 2, 1),
    ],
)
def test_yaml_syntax_error_has_line_and_column(tmp_path: Path, text: str, line: int, column: int) -> None:
    """A syntax error names the file and the line and column, on one line."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"YAML syntax error at line {line}, column {column}: ") as info:
        read_raw(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)
    assert info.value.path == str(path)


def test_duplicate_key_is_rejected_with_its_line(tmp_path: Path) -> None:
    """A key given twice in one mapping is an error instead of silently keeping the last one."""
    path = write(tmp_path, "n_trials: 10\nn_jobs: 2\nn_trials: 100\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: YAML error at line 3, column 1: found duplicate key 'n_trials'"):
        read_raw(path)


def test_nested_duplicate_key_is_rejected(tmp_path: Path) -> None:
    """Duplicate keys are also caught inside nested mappings."""
    path = write(tmp_path, "sweep_parameters:\n  lr:\n    type: float\n    low: 1\n    low: 2\n")
    with pytest.raises(ConfigError, match=r"line 5, column 5: found duplicate key 'low'"):
        read_raw(path)


def test_merge_key_may_override_anchor(tmp_path: Path) -> None:
    """A YAML merge key (<<: *base) may be overridden without counting as a duplicate."""
    path = write(tmp_path, "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert read_raw(path) == {"base": {"x": 1, "y": 2}, "other": {"x": 1, "y": 3}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"the file is empty; expected a mapping of settings"),
        ("# only a comment\n", r"the file is empty"),
        ("null\n", r"the file is empty"),
        ("- 1\n- 2\n", r"the top level must be a mapping of key: value, got a list"),
        ("just a string\n", r"the top level must be a mapping of key: value, got a str"),
        ("42\n", r"got a int"),
        ("1: a\n", r"config\.yaml: 1: keys must be strings"),
    ],
)
def test_read_raw_rejects_non_mapping_files(tmp_path: Path, text: str, message: str) -> None:
    """Empty files and top levels that are not string-keyed mappings are ConfigErrors."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        read_raw(path)
    assert str(path) in str(info.value)


def test_read_raw_unreadable_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is reported, not a traceback."""
    path = tmp_path / "config.yaml"
    path.write_bytes(b"n_trials: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: cannot read the file"):
        read_raw(path)


def test_read_raw_guide_example(tmp_path: Path) -> None:
    """The user guide's example file reads with floats, ints, booleans and lists as written."""
    raw = read_raw(write(tmp_path, GUIDE_YAML))
    lr = raw["sweep_parameters"]["learning_rate"]
    assert lr == {"type": "float", "low": 5.0e-5, "high": 1.0e-2, "log": True}
    assert isinstance(lr["low"], float) and isinstance(lr["high"], float)
    assert raw["sweep_parameters"]["optimizer"]["choices"] == ["Adam", "RMSprop", "SGD"]


# --- validation: study settings -----------------------------------------------------------------


def test_defaults() -> None:
    """Missing settings take their defaults; experiment_name is the file stem."""
    cfg = validate({"n_trials": 5}, "some/dir/my_exp.yaml", cpu_count=2)
    assert cfg.direction == "minimize"
    assert cfg.n_jobs == 1
    assert cfg.n_trials == 5
    assert cfg.n_startup_trials == 10
    assert cfg.tag == "default"
    assert cfg.experiment_name == "my_exp"
    assert cfg.study_name == "my_exp_default"
    assert cfg.seed is None
    assert cfg.trial_timeout is None
    assert cfg.params == ()
    assert cfg.source == "some/dir/my_exp.yaml"
    assert dict(cfg.fixed) == {"experiment_name": "my_exp", "tag": "default"}


@pytest.mark.parametrize(
    ("n_jobs", "expected"),
    [(1, 1), (2, 2), (16, 16), (-1, 2), (-2, 1), ("3", 3), (4.0, 4), ("1e1", 10), (None, "error")],
)
def test_n_jobs_values(n_jobs: Any, expected: Any) -> None:
    """n_jobs -1 means all cores (cpu_count), -2 all but one; integral numbers and strings are accepted."""
    if expected == "error":
        with pytest.raises(ConfigError, match=r"config\.yaml: n_jobs: must be a positive integer"):
            check(base(n_jobs=n_jobs))
    else:
        assert check(base(n_jobs=n_jobs)).n_jobs == expected


@pytest.mark.parametrize("value", ["auto", "AUTO", " auto "])
def test_n_jobs_auto_starts_from_the_cores_or_the_devices(value: str) -> None:
    """n_jobs: auto is the cores (cpu_count), or one per listed device; a fixed n_jobs is not auto."""
    cfg = check(base(n_jobs=value))
    assert (cfg.n_jobs, cfg.n_jobs_auto) == (2, True)
    assert check(base(n_jobs=value, gpus=["0", "1", "2"])).n_jobs == 3
    assert check(base(n_jobs=2)).n_jobs_auto is False


def test_dry_run_says_what_n_jobs_auto_starts_from() -> None:
    from hparam_joblib._decorator import _dry_run_text

    text = _dry_run_text(check(base(n_jobs="auto")), Path("."))
    assert "# n_jobs: auto: up to 2 (the cores), a trial starting only when memory holds it, n_trials:" in text
    assert "# n_jobs: 2, n_trials:" in _dry_run_text(check(base(n_jobs=2)), Path("."))


@pytest.mark.parametrize("n_jobs", [0, "x", 1.5, True, False, -3, [1], {"a": 1}, "1.5", ""])
def test_n_jobs_rejected(n_jobs: Any) -> None:
    """n_jobs must be a non-zero integer no lower than -cpu_count; the message names the value."""
    with pytest.raises(
        ConfigError,
        match=rf"^config\.yaml: n_jobs: must be a positive integer, -1 for all 2 cores, or auto, got {re.escape(repr(n_jobs))}$",
    ):
        check(base(n_jobs=n_jobs))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, r"^config\.yaml: n_trials: is required \(an integer >= 1\)$"),
        ({"n_trials": None}, r"n_trials: is required"),
        ({"n_trials": 0}, r"^config\.yaml: n_trials: must be an integer >= 1, got 0$"),
        ({"n_trials": -5}, r"n_trials: must be an integer >= 1, got -5"),
        ({"n_trials": "ten"}, r"^config\.yaml: n_trials: must be an integer >= 1, got 'ten'$"),
        ({"n_trials": 2.5}, r"n_trials: must be an integer >= 1, got 2\.5"),
        ({"n_trials": True}, r"n_trials: must be an integer >= 1, got True"),
        ({"n_trials": [10]}, r"n_trials: must be an integer >= 1, got \[10\]"),
        ({"n_trials": float("inf")}, r"n_trials: must be an integer >= 1, got inf"),
        ({"n_trials": 5, "n_startup_trials": -1}, r"n_startup_trials: must be an integer >= 0, got -1"),
        ({"n_trials": 5, "n_startup_trials": "many"}, r"n_startup_trials: must be an integer >= 0"),
        ({"n_trials": 5, "seed": -1}, r"seed: must be an integer >= 0, got -1"),
        ({"n_trials": 5, "seed": "abc"}, r"seed: must be an integer >= 0, got 'abc'"),
        ({"n_trials": 5, "seed": 1.5}, r"seed: must be an integer >= 0"),
    ],
)
def test_integer_settings_rejected(raw: dict[str, Any], message: str) -> None:
    """n_trials is required and positive; n_startup_trials and seed are non-negative integers."""
    with pytest.raises(ConfigError, match=message):
        check(raw)


@pytest.mark.parametrize(
    ("raw", "attr", "expected"),
    [
        ({"n_trials": "10"}, "n_trials", 10),
        ({"n_trials": 1e2}, "n_trials", 100),
        ({"n_trials": "1e2"}, "n_trials", 100),
        ({"n_trials": 1}, "n_trials", 1),
        ({"n_trials": 5, "n_startup_trials": 0}, "n_startup_trials", 0),
        ({"n_trials": 5, "n_startup_trials": None}, "n_startup_trials", 10),
        ({"n_trials": 5, "n_startup_trials": "3"}, "n_startup_trials", 3),
        ({"n_trials": 5, "seed": 0}, "seed", 0),
        ({"n_trials": 5, "seed": 42}, "seed", 42),
        ({"n_trials": 5, "seed": None}, "seed", None),
        ({"n_trials": 5, "direction": "maximize"}, "direction", "maximize"),
        ({"n_trials": 5, "direction": " Maximize "}, "direction", "maximize"),
        ({"n_trials": 5, "direction": "MINIMIZE"}, "direction", "minimize"),
        ({"n_trials": 5, "trial_timeout": 2.5}, "trial_timeout", 2.5),
        ({"n_trials": 5, "trial_timeout": 30}, "trial_timeout", 30.0),
        ({"n_trials": 5, "trial_timeout": "1e2"}, "trial_timeout", 100.0),
        ({"n_trials": 5, "trial_timeout": None}, "trial_timeout", None),
    ],
)
def test_settings_accepted(raw: dict[str, Any], attr: str, expected: Any) -> None:
    """Valid study settings are normalised to their types."""
    value = getattr(check(raw), attr)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("direction", ["max", "minimise", "", 1, None, True, ["minimize"]])
def test_direction_rejected(direction: Any) -> None:
    """direction must be minimize or maximize; the message lists both."""
    with pytest.raises(
        ConfigError,
        match=rf"^config\.yaml: direction: must be one of \['minimize', 'maximize'\], got {re.escape(repr(direction))}$",
    ):
        check(base(direction=direction))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, r"trial_timeout: must be a number of seconds > 0, got 0"),
        (-1.5, r"trial_timeout: must be a number of seconds > 0, got -1\.5"),
        ("abc", r"trial_timeout: must be a number, got 'abc'"),
        (True, r"trial_timeout: must be a number, got True"),
        ([5], r"trial_timeout: must be a number, got \[5\]"),
        (float("nan"), r"trial_timeout: must be a number, got nan"),
    ],
)
def test_trial_timeout_rejected(value: Any, message: str) -> None:
    """trial_timeout must be a finite number of seconds > 0."""
    with pytest.raises(ConfigError, match=rf"^config\.yaml: {message}$"):
        check(base(trial_timeout=value))


# --- validation: experiment_name and tag --------------------------------------------------------


@pytest.mark.parametrize("key", ["experiment_name", "tag"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a/b", r"'a/b' would leave the save directory"),
        ("../up", r"'\.\./up' would leave the save directory"),
        ("..", r"'\.\.' would leave the save directory"),
        (".", r"'\.' would leave the save directory"),
        ("a..b", r"'a\.\.b' would leave the save directory"),
        ("a\\b", r"'a\\\\b' would leave the save directory"),
        ("/abs", r"'/abs' would leave the save directory"),
        ("", r"must not be empty"),
        ("   ", r"must not be empty"),
        (True, r"must be a string, got True \(YAML reads yes/no/on/off as booleans; quote it\)"),
        (None, r"must be a string, got None"),
        (["a"], r"must be a string, got \['a'\]"),
        ({"a": 1}, r"must be a string"),
    ],
)
def test_names_rejected(key: str, value: Any, message: str) -> None:
    """experiment_name and tag name the database file, so they cannot leave the save directory."""
    with pytest.raises(ConfigError, match=rf"^config\.yaml: {key}: {message}") as info:
        check(base(**{key: value}))
    assert info.value.key == key


@pytest.mark.parametrize(
    ("value", "expected"),
    [("ImageNet_exp", "ImageNet_exp"), ("exp-1.v2", "exp-1.v2"), ("  padded ", "padded"), (5, "5"), (0.5, "0.5")],
)
def test_names_accepted(value: Any, expected: str) -> None:
    """Plain names (and numbers) are accepted, stripped, and passed to the function as strings."""
    cfg = check(base(experiment_name=value, tag=value))
    assert cfg.experiment_name == expected
    assert cfg.tag == expected
    assert cfg.study_name == f"{expected}_{expected}"
    assert cfg.fixed["experiment_name"] == expected
    assert cfg.fixed["tag"] == expected


# --- validation: sweep parameters ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"type": "float", "low": 5.0e-5, "high": 1.0e-2, "log": True},
            ParamSpec(name="p", type="float", low=5.0e-5, high=1.0e-2, log=True),
        ),
        ({"type": "float", "low": 0, "high": 1}, ParamSpec(name="p", type="float", low=0.0, high=1.0)),
        ({"type": "float", "low": "1e-3", "high": "1e-1"}, ParamSpec(name="p", type="float", low=0.001, high=0.1)),
        (
            {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
            ParamSpec(name="p", type="float", low=0.0, high=1.0, step=0.25),
        ),
        (
            {"type": "float", "low": -1, "high": 1, "log": False, "step": None},
            ParamSpec(name="p", type="float", low=-1.0, high=1.0),
        ),
        ({"type": "int", "low": 10, "high": 100, "step": 10}, ParamSpec(name="p", type="int", low=10, high=100, step=10)),
        ({"type": "int", "low": "10", "high": 100.0}, ParamSpec(name="p", type="int", low=10, high=100)),
        ({"type": "int", "low": 1, "high": 1024, "log": True}, ParamSpec(name="p", type="int", low=1, high=1024, log=True)),
        (
            {"type": "int", "low": 1, "high": 1024, "log": True, "step": 1},
            ParamSpec(name="p", type="int", low=1, high=1024, log=True, step=1),
        ),
        ({"type": "int", "low": -5, "high": 5}, ParamSpec(name="p", type="int", low=-5, high=5)),
        (
            {"type": "categorical", "choices": ["Adam", "RMSprop", "SGD"]},
            ParamSpec(name="p", type="categorical", choices=("Adam", "RMSprop", "SGD")),
        ),
        (
            {"type": "categorical", "choices": [1, "1", None, 2.5, "2.5"]},
            ParamSpec(name="p", type="categorical", choices=(1, "1", None, 2.5, "2.5")),
        ),
        ({"type": "categorical", "choices": [True]}, ParamSpec(name="p", type="categorical", choices=(True,))),
    ],
)
def test_param_accepted(spec: dict[str, Any], expected: ParamSpec) -> None:
    """Valid specs become ParamSpecs with float bounds for float and int bounds for int."""
    (param,) = check(with_param(spec)).params
    assert param == expected
    if param.type != "categorical":
        assert type(param.low) is type(expected.low)
        assert type(param.high) is type(expected.high)
        assert type(param.step) is type(expected.step)


def test_guide_example_validates(tmp_path: Path) -> None:
    """The user guide's example config validates to the documented study, space and fixed values."""
    cfg, notes = load_config(write(tmp_path, GUIDE_YAML), [], cpu_count=2)
    assert notes == []
    assert cfg.study_name == "ImageNet_exp_first_sweep"
    assert (cfg.direction, cfg.n_jobs, cfg.n_trials, cfg.n_startup_trials) == ("minimize", 8, 100, 20)
    assert cfg.params == (
        ParamSpec(name="learning_rate", type="float", low=5.0e-5, high=1.0e-2, log=True),
        ParamSpec(name="num_epochs", type="int", low=10, high=100, step=10),
        ParamSpec(name="optimizer", type="categorical", choices=("Adam", "RMSprop", "SGD")),
    )
    assert dict(cfg.fixed) == {"experiment_name": "ImageNet_exp", "tag": "first_sweep", "hidden_layers": 8}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        # type
        ({"low": 0, "high": 1}, r"sweep_parameters\.p\.type: is missing; expected one of \['float', 'int', 'categorical'\]"),
        ({"type": "double", "low": 0, "high": 1}, r"sweep_parameters\.p\.type: unknown type 'double'; expected one of"),
        ({"type": "Float", "low": 0, "high": 1}, r"sweep_parameters\.p\.type: unknown type 'Float'"),
        ({"type": None, "low": 0, "high": 1}, r"sweep_parameters\.p\.type: unknown type None"),
        (3, r"sweep_parameters\.p: must be a mapping with a 'type' \(float, int, categorical\), got 3"),
        ("float", r"sweep_parameters\.p: must be a mapping with a 'type'"),
        (None, r"sweep_parameters\.p: must be a mapping with a 'type'"),
        # unknown settings
        ({"type": "float", "lo": 0, "high": 1}, r"sweep_parameters\.p\.lo: unknown setting for a float parameter; allowed: type, low, high, log, step"),
        ({"type": "int", "low": 0, "high": 9, "stepp": 1}, r"sweep_parameters\.p\.stepp: unknown setting for a int parameter"),
        ({"type": "categorical", "choices": [1], "low": 0}, r"sweep_parameters\.p\.low: unknown setting for a categorical parameter; allowed: type, choices"),
        ({"type": "float", "low": 0, "high": 1, "choices": [1]}, r"sweep_parameters\.p\.choices: unknown setting"),
        # bounds present and numeric
        ({"type": "float", "high": 1}, r"sweep_parameters\.p\.low: is required for a float parameter"),
        ({"type": "int", "low": 1}, r"sweep_parameters\.p\.high: is required for a int parameter"),
        ({"type": "float", "low": None, "high": 1}, r"sweep_parameters\.p\.low: is required"),
        ({"type": "float", "low": "abc", "high": 1}, r"sweep_parameters\.p\.low: must be a number, got 'abc'"),
        ({"type": "float", "low": 0, "high": [1, 2]}, r"sweep_parameters\.p\.high: must be a number, got \[1, 2\]"),
        ({"type": "float", "low": {"a": 1}, "high": 2}, r"sweep_parameters\.p\.low: must be a number, got \{'a': 1\}"),
        ({"type": "float", "low": True, "high": 2}, r"sweep_parameters\.p\.low: must be a number, got True"),
        ({"type": "float", "low": 0, "high": float("inf")}, r"sweep_parameters\.p\.high: must be a number, got inf"),
        ({"type": "float", "low": 0, "high": "nan"}, r"sweep_parameters\.p\.high: must be a number, got 'nan'"),
        ({"type": "float", "low": 0, "high": 1, "step": "x"}, r"sweep_parameters\.p\.step: must be a number, got 'x'"),
        # ordering
        ({"type": "float", "low": 0.1, "high": 0.01}, r"^config\.yaml: sweep_parameters\.p\.high: \(0\.01\) must be > low \(0\.1\)$"),
        ({"type": "float", "low": 1, "high": 1}, r"sweep_parameters\.p\.high: \(1\) must be > low \(1\)"),
        ({"type": "int", "low": 5, "high": 2}, r"sweep_parameters\.p\.high: \(2\) must be > low \(5\)"),
        ({"type": "float", "low": 1.0000001, "high": 1.0000001}, r"\(1\.0000001\) must be > low \(1\.0000001\)"),
        # log
        ({"type": "float", "low": 0, "high": 1, "log": True}, r"sweep_parameters\.p\.low: must be > 0 when log is true, got 0"),
        ({"type": "float", "low": -1, "high": 1, "log": True}, r"sweep_parameters\.p\.low: must be > 0 when log is true, got -1"),
        ({"type": "int", "low": 0, "high": 8, "log": True}, r"sweep_parameters\.p\.low: must be > 0 when log is true"),
        ({"type": "float", "low": 1, "high": 2, "log": "true"}, r"sweep_parameters\.p\.log: must be true or false, got 'true'"),
        ({"type": "float", "low": 1, "high": 2, "log": 1}, r"sweep_parameters\.p\.log: must be true or false, got 1"),
        # step
        ({"type": "float", "low": 0, "high": 1, "step": 0}, r"sweep_parameters\.p\.step: must be > 0, got 0"),
        ({"type": "float", "low": 0, "high": 1, "step": -0.1}, r"sweep_parameters\.p\.step: must be > 0, got -0\.1"),
        ({"type": "int", "low": 0, "high": 10, "step": -2}, r"sweep_parameters\.p\.step: must be > 0, got -2"),
        ({"type": "float", "low": 0.1, "high": 1, "step": 0.1, "log": True}, r"sweep_parameters\.p\.step: cannot be combined with log: true"),
        ({"type": "int", "low": 1, "high": 64, "step": 2, "log": True}, r"sweep_parameters\.p\.step: cannot be combined with log: true"),
        ({"type": "float", "low": 0, "high": 1, "step": 2}, r"sweep_parameters\.p\.step: \(2\) is larger than high - low \(1\)"),
        # int bounds
        ({"type": "int", "low": 1.5, "high": 10}, r"sweep_parameters\.p\.low: must be an integer for an int parameter, got 1\.5"),
        ({"type": "int", "low": 1, "high": "10.5"}, r"sweep_parameters\.p\.high: must be an integer for an int parameter, got '10\.5'"),
        ({"type": "int", "low": 1, "high": 10, "step": 0.5}, r"sweep_parameters\.p\.step: must be an integer for an int parameter, got 0\.5"),
        ({"type": "int", "low": "abc", "high": 10}, r"sweep_parameters\.p\.low: must be a number, got 'abc'"),
        # categorical
        ({"type": "categorical"}, r"sweep_parameters\.p\.choices: must be a non-empty list, got None"),
        ({"type": "categorical", "choices": []}, r"sweep_parameters\.p\.choices: is empty; give at least one choice"),
        ({"type": "categorical", "choices": "Adam"}, r"sweep_parameters\.p\.choices: must be a non-empty list, got 'Adam'"),
        ({"type": "categorical", "choices": {"a": 1}}, r"sweep_parameters\.p\.choices: must be a non-empty list"),
        ({"type": "categorical", "choices": ["a", "b", "a"]}, r"sweep_parameters\.p\.choices: duplicated choice 'a'$"),
        ({"type": "categorical", "choices": [None, None]}, r"sweep_parameters\.p\.choices: duplicated choice None$"),
        ({"type": "categorical", "choices": [[1, 2], 3]}, r"sweep_parameters\.p\.choices: choice \[1, 2\] is not a string, number, boolean or null"),
        ({"type": "categorical", "choices": [{"a": 1}]}, r"sweep_parameters\.p\.choices: choice \{'a': 1\} is not a string"),
    ],
)
def test_param_rejected(spec: Any, message: str) -> None:
    """Every bad spec is a ConfigError naming the file and the dotted key path."""
    with pytest.raises(ConfigError, match=message) as info:
        check(with_param(spec))
    assert str(info.value).startswith("config.yaml: sweep_parameters.p")
    assert info.value.path == SRC
    assert info.value.key.startswith("sweep_parameters.p")


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ([1, 1.0], r"duplicated choice 1\.0 \(equal to 1; Optuna cannot tell them apart\)"),
        ([1, True], r"duplicated choice True \(equal to 1; Optuna cannot tell them apart\)"),
        ([True, 1.0], r"duplicated choice 1\.0 \(equal to True; Optuna cannot tell them apart\)"),
        ([0, False], r"duplicated choice False \(equal to 0;"),
        ([0.0, -0.0], r"duplicated choice -0\.0$"),
    ],
)
def test_choices_equal_under_optuna_are_duplicates(choices: list[Any], message: str) -> None:
    """1, 1.0 and True are one choice to Optuna (it would record the wrong value), so they are duplicates."""
    with pytest.raises(ConfigError, match=rf"sweep_parameters\.p\.choices: {message}"):
        check(with_param({"type": "categorical", "choices": choices}))


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        (base(sweep_parameters=[1, 2]), "sweep_parameters", r"must be a mapping of parameter name to spec, got \[1, 2\]"),
        (base(sweep_parameters="lr"), "sweep_parameters", r"must be a mapping of parameter name to spec"),
        (
            with_param({"type": "int", "low": 1, "high": 2}, name="a..b"),
            "sweep_parameters.a..b",
            r"parameter names must be non-empty, dotted names",
        ),
        (
            with_param({"type": "int", "low": 1, "high": 2}, name=".a"),
            "sweep_parameters..a",
            r"parameter names must be non-empty",
        ),
        (
            base(sweep_parameters={
                "model": {"type": "int", "low": 1, "high": 2},
                "model.lr": {"type": "float", "low": 0.1, "high": 1},
            }),
            "sweep_parameters.model.lr",
            r"lies inside sweep parameter 'model'; a value cannot be both a number and a mapping",
        ),
        (
            base(sweep_parameters={
                "a.b.c": {"type": "float", "low": 0.1, "high": 1},
                "a.b": {"type": "int", "low": 1, "high": 2},
            }),
            "sweep_parameters.a.b.c",
            r"lies inside sweep parameter 'a\.b'",
        ),
        (
            with_param({"type": "int", "low": 1, "high": 4}, name="hidden_layers.width", hidden_layers=8),
            "sweep_parameters.hidden_layers.width",
            r"hidden_layers is a fixed value \(8\), not a mapping",
        ),
        (
            with_param({"type": "int", "low": 1, "high": 4}, name="model.head.width", model={"head": "linear"}),
            "sweep_parameters.model.head.width",
            r"model\.head is a fixed value \('linear'\), not a mapping",
        ),
        (
            with_param({"type": "categorical", "choices": ["a", "b"]}, name="tag"),
            "sweep_parameters.tag",
            r"experiment_name and tag cannot be swept",
        ),
        (
            with_param({"type": "categorical", "choices": ["a", "b"]}, name="experiment_name"),
            "sweep_parameters.experiment_name",
            r"experiment_name and tag cannot be swept",
        ),
    ],
)
def test_param_paths_rejected(raw: dict[str, Any], key: str, message: str) -> None:
    """Sweep names must not nest in each other, land inside a fixed scalar, or rename the study."""
    with pytest.raises(ConfigError, match=rf"^config\.yaml: {re.escape(key)}: {message}") as info:
        check(raw)
    assert info.value.key == key


def test_sweep_inside_fixed_mapping_is_allowed() -> None:
    """A dotted sweep name may land inside a fixed mapping (or a mapping that does not exist yet)."""
    raw = base(
        model={"depth": 3},
        sweep_parameters={
            "model.lr": {"type": "float", "low": 0.1, "high": 1},
            "optim.beta.one": {"type": "float", "low": 0.5, "high": 0.99},
        },
    )
    cfg = check(raw)
    assert [p.name for p in cfg.params] == ["model.lr", "optim.beta.one"]
    assert cfg.fixed["model"] == {"depth": 3}


def test_fixed_and_resolved_split() -> None:
    """Study settings are not passed to the function; names and every other key are; resolved keeps all."""
    raw = base(
        n_jobs=2, direction="maximize", seed=1, trial_timeout=5, n_startup_trials=3,
        hidden_layers=8, model={"bias": True}, tag="t",
        sweep_parameters={"lr": {"type": "float", "low": 0.1, "high": 1}},
    )
    before = copy.deepcopy(raw)
    cfg = check(raw)
    assert dict(cfg.fixed) == {"hidden_layers": 8, "model": {"bias": True}, "tag": "t", "experiment_name": "config"}
    assert dict(cfg.resolved) == raw
    assert raw == before
    assert cfg.fixed["model"] is not raw["model"]
    assert cfg.resolved["model"] is not raw["model"]


def test_fixed_copy_is_deep() -> None:
    """fixed_copy returns a fresh deep copy each time."""
    cfg = check(base(model={"layers": [1, 2]}))
    copy_1 = cfg.fixed_copy()
    copy_1["model"]["layers"].append(3)
    assert cfg.fixed["model"]["layers"] == [1, 2]
    assert cfg.fixed_copy() == dict(cfg.fixed)


def test_search_config_is_frozen() -> None:
    """The validated objects are frozen."""
    cfg = check(base())
    with pytest.raises(AttributeError):
        cfg.n_trials = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ({"type": "float", "low": 5e-5, "high": 0.01, "log": True}, "float [5e-05, 0.01] log"),
        ({"type": "int", "low": 10, "high": 100, "step": 10}, "int [10, 100] step 10"),
        ({"type": "categorical", "choices": ["a", 1]}, "categorical ['a', 1]"),
    ],
)
def test_param_describe(spec: dict[str, Any], text: str) -> None:
    """ParamSpec.describe is one readable line."""
    assert check(with_param(spec)).params[0].describe() == text


# --- load_config: overrides and notes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "attr", "expected"),
    [
        (["n_trials=200"], "n_trials", 200),
        (["n_jobs=16", "tag=second_sweep"], "n_jobs", 16),
        (["n_jobs=16", "tag=second_sweep"], "tag", "second_sweep"),
        (["n_jobs=-1"], "n_jobs", 2),
        (["direction=maximize"], "direction", "maximize"),
        (["experiment_name=cifar"], "study_name", "cifar_first_sweep"),
        (["n_startup_trials=1e1"], "n_startup_trials", 10),
    ],
)
def test_load_config_applies_overrides(tmp_path: Path, sets: list[str], attr: str, expected: Any) -> None:
    """--set values replace the file's values before validation."""
    path = write(tmp_path, GUIDE_YAML)
    cfg, notes = load_config(path, [parse_override(s) for s in sets], cpu_count=2)
    assert getattr(cfg, attr) == expected
    assert notes == []


def test_load_config_override_sweep_bound(tmp_path: Path) -> None:
    """--set reaches into sweep_parameters with YAML-typed values."""
    path = write(tmp_path, GUIDE_YAML)
    cfg, _ = load_config(path, [parse_override("sweep_parameters.learning_rate.low=1e-4")], cpu_count=2)
    assert cfg.params[0].low == 1e-4
    assert cfg.resolved["sweep_parameters"]["learning_rate"]["low"] == 1e-4


def test_load_config_new_nested_key_is_noted(tmp_path: Path) -> None:
    """A --set key that is not in the file is created nested and reported as a note."""
    path = write(tmp_path, GUIDE_YAML)
    cfg, notes = load_config(path, [parse_override("model.first_layer.bias=False")], cpu_count=2)
    assert cfg.fixed["model"] == {"first_layer": {"bias": False}}
    assert notes == ["--set model.first_layer.bias: not in config.yaml; added it as a new key"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("n_trials=ten", r"config\.yaml \(with --set 'n_trials=ten'\): n_trials: must be an integer >= 1, got 'ten'$"),
        ("n_jobs=0", r"config\.yaml \(with --set 'n_jobs=0'\): n_jobs: must be a positive integer"),
        ("tag=a/b", r"config\.yaml \(with --set 'tag=a/b'\): tag: 'a/b' would leave the save directory"),
        (
            "sweep_parameters.learning_rate.high=abc",
            r"\(with --set 'sweep_parameters\.learning_rate\.high=abc'\): sweep_parameters\.learning_rate\.high: must be a number, got 'abc'",
        ),
        (
            "sweep_parameters.learning_rate.low=0.1",
            r"\(with --set 'sweep_parameters\.learning_rate\.low=0\.1'\): sweep_parameters\.learning_rate\.high: \(0\.01\) must be > low \(0\.1\)",
        ),
        (
            "sweep_parameters.learning_rate.log=False",
            None,
        ),
        (
            "sweep_parameters.num_epochs.log=True",
            r"\(with --set 'sweep_parameters\.num_epochs\.log=True'\): sweep_parameters\.num_epochs\.step: cannot be combined with log: true",
        ),
        (
            "sweep_parameters.optimizer={type: categorical, choices: []}",
            r"\(with --set 'sweep_parameters\.optimizer=\{type: categorical, choices: \[\]\}'\): sweep_parameters\.optimizer\.choices: is empty",
        ),
        (
            "sweep_parameters={lr: 3}",
            r"\(with --set 'sweep_parameters=\{lr: 3\}'\): sweep_parameters\.lr: must be a mapping",
        ),
    ],
)
def test_load_config_error_from_set_mentions_the_item(tmp_path: Path, item: str, message: str | None) -> None:
    """An error about a value that came from --set names the --set text."""
    path = write(tmp_path, GUIDE_YAML)
    if message is None:
        cfg, _ = load_config(path, [parse_override(item)], cpu_count=2)
        assert cfg.params[0].log is False
        return
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, [parse_override(item)], cpu_count=2)
    assert str(info.value).startswith(str(path))


def test_set_on_fixed_scalar_under_sweep_mentions_the_item(tmp_path: Path) -> None:
    """A --set that turns a fixed mapping into a scalar under a dotted sweep names the --set text."""
    text = GUIDE_YAML + "  model.lr:\n    type: float\n    low: 0.1\n    high: 1\nmodel: {depth: 2}\n"
    path = write(tmp_path, text)
    load_config(path, [], cpu_count=2)
    with pytest.raises(ConfigError, match=r"\(with --set 'model=3'\): sweep_parameters\.model\.lr: model is a fixed value \(3\)"):
        load_config(path, [parse_override("model=3")], cpu_count=2)


def test_error_without_set_does_not_mention_set(tmp_path: Path) -> None:
    """An error in the file itself names only the file, even when unrelated --set items were given."""
    path = write(tmp_path, GUIDE_YAML.replace("n_trials: 100", "n_trials: 0"))
    with pytest.raises(ConfigError) as info:
        load_config(path, [parse_override("tag=x")], cpu_count=2)
    assert str(info.value) == f"{path}: n_trials: must be an integer >= 1, got 0"


def test_bad_yaml_in_set_is_override_error(tmp_path: Path) -> None:
    """A --set value with a Python tag is refused at parse time (OverrideError), not executed."""
    marker = tmp_path / "pwned"
    with pytest.raises(OverrideError, match="value is not valid YAML"):
        parse_override(f"x=!!python/object/apply:os.system ['touch {marker}']")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("n_trails", "n_trials"),
        ("ntrials", "n_trials"),
        ("n_job", "n_jobs"),
        ("directon", "direction"),
        ("direciton", "direction"),
        ("Direction", "direction"),
        ("sweep_parameter", "sweep_parameters"),
        ("n_startup_trails", "n_startup_trials"),
        ("n-startup-trials", "n_startup_trials"),
        ("experiment_nam", "experiment_name"),
        ("trial_timout", "trial_timeout"),
        ("stop_no_improvment", "stop_no_improvement"),
        ("samples", "sampler"),
    ],
)
def test_typo_of_a_setting_is_an_error(tmp_path: Path, key: str, suggestion: str) -> None:
    """A top-level key within a typo of a setting (5+ letters) stops the load, with the escape."""
    path = write(tmp_path, f"n_trials: 3\n{key}: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [], cpu_count=2)
    what = "nothing would be searched" if suggestion == "sweep_parameters" else f"{suggestion} would keep its default"
    assert str(info.value) == (
        f"{path}: {key}: not a setting, so it would reach your function as a fixed parameter and "
        f"{what}; did you mean {suggestion!r}? If {key} is for your "
        f"function, list it: not_settings: [{key}]"
    )


@pytest.mark.parametrize("key", ["n_job", "samples", "direciton", "sweep_parameter"])
def test_a_listed_key_is_a_fixed_parameter(tmp_path: Path, key: str) -> None:
    """``not_settings`` says a key that looks like a setting is meant: it reaches the function."""
    path = write(tmp_path, f"n_trials: 3\n{key}: 5\nnot_settings: [{key}]\n")
    cfg, notes = load_config(path, [], cpu_count=2)
    assert cfg.fixed[key] == 5 and "not_settings" not in cfg.fixed
    assert notes == []


def test_a_search_space_under_another_key_is_an_error(tmp_path: Path) -> None:
    """Without sweep_parameters, a key holding parameter specs is a misnamed sweep_parameters."""
    path = write(tmp_path, "n_trials: 3\nsearch_space:\n  lr: {type: float, low: 0.1, high: 1.0}\n")
    with pytest.raises(ConfigError, match=r"^.*config.yaml: search_space: not a setting, .* and nothing would "
                       r"be searched; did you mean 'sweep_parameters'\? If search_space is for your function, "
                       r"list it: not_settings: \[search_space\]$"):
        load_config(path, [], cpu_count=2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not_settings: n_jobs", "not_settings: n_jobs is a setting; list only your own keys whose names look like one"),
        ("not_settings: [lr]", "not_settings: lr is not a top-level key of the file"),
        ("not_settings: {a: 1}", "not_settings: must be a list of your own top-level keys, e.g. [samples], got {'a': 1}"),
    ],
)
def test_a_bad_not_settings_list_is_an_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, f"n_trials: 3\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [], cpu_count=2)
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize(("key", "suggestion"), [("tags", "tag"), ("seeds", "seed"), ("gpu", "gpus")])
def test_near_a_short_setting_is_a_note(tmp_path: Path, key: str, suggestion: str) -> None:
    """tags, seeds, gpu are common fixed parameters: a note, silenced by not_settings."""
    path = write(tmp_path, f"n_trials: 3\n{key}: 5\n")
    cfg, notes = load_config(path, [], cpu_count=2)
    assert notes == [
        (f"config.yaml: {key}: not a setting, so it is passed to the function as a fixed parameter; "
         f"did you mean {suggestion!r}? (not_settings: [{key}] silences this)")
    ]
    assert cfg.fixed[key] == 5
    path.write_text(f"n_trials: 3\n{key}: 5\nnot_settings: [{key}]\n")
    assert load_config(path, [], cpu_count=2)[1] == []


def test_the_guide_config_has_no_typo(tmp_path: Path) -> None:
    """The guide's YAML, as written, loads with no error and no note."""
    _, notes = load_config(write(tmp_path, GUIDE_YAML), [], cpu_count=2)
    assert notes == []


@pytest.mark.parametrize("key", ["hidden_layers", "learning_rate", "model", "lr", "batch_size", "n"])
def test_ordinary_keys_are_not_noted(tmp_path: Path, key: str) -> None:
    """Ordinary fixed parameters produce no notes."""
    path = write(tmp_path, f"n_trials: 3\n{key}: 5\n")
    _, notes = load_config(path, [], cpu_count=2)
    assert notes == []


def test_typo_created_by_set_is_an_error(tmp_path: Path) -> None:
    """A --set key absent from the file and one edit from a setting stops the run (issue 12)."""
    path = write(tmp_path, "n_trials: 3\n")
    with pytest.raises(OverrideError, match=r"did you mean 'n_trials' \(--set n_trials=5\)\?"):
        load_config(path, [parse_override("n_trails=5")], cpu_count=2)


def test_load_config_does_not_create_files(tmp_path: Path) -> None:
    """Loading and validating touch nothing on disk."""
    path = write(tmp_path, GUIDE_YAML)
    before = sorted(tmp_path.rglob("*"))
    load_config(path, [parse_override("n_trials=1")], cpu_count=2)
    assert sorted(tmp_path.rglob("*")) == before


# --- resolve_config_path ------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A working directory and a separate project directory holding the defining script."""
    cwd = tmp_path / "cwd"
    project = tmp_path / "project"
    cwd.mkdir()
    (project / "config").mkdir(parents=True)
    (cwd / "config").mkdir()
    script = project / "your_script.py"
    script.write_text("# defines train\n")
    monkeypatch.chdir(cwd)
    return {
        "given": cwd / "config.yaml",
        "cwd_config": cwd / "config" / "config.yaml",
        "script_config": project / "config" / "config.yaml",
        "beside_script": project / "config.yaml",
        "script": script,
    }


@pytest.mark.parametrize(
    ("present", "chosen"),
    [
        (["given", "cwd_config", "script_config", "beside_script"], "given"),
        (["cwd_config", "script_config", "beside_script"], "cwd_config"),
        (["script_config", "beside_script"], "script_config"),
        (["beside_script"], "beside_script"),
        (["given", "beside_script"], "given"),
        (["cwd_config", "beside_script"], "cwd_config"),
    ],
)
def test_resolve_config_path_order(layout: dict[str, Path], present: list[str], chosen: str) -> None:
    """As given, then cwd/config/, then config/ beside the defining file, then beside it."""
    for name in present:
        layout[name].write_text("n_trials: 1\n")
    found = resolve_config_path("config.yaml", str(layout["script"]))
    assert found.resolve() == layout[chosen].resolve()
    assert found.is_file()


def test_resolve_config_path_relative_subdirectory(layout: dict[str, Path]) -> None:
    """A --config path like config/cifar10_exp.yaml is found beside the script when cwd is elsewhere."""
    target = layout["script"].parent / "config" / "cifar10_exp.yaml"
    target.write_text("n_trials: 1\n")
    found = resolve_config_path("config/cifar10_exp.yaml", str(layout["script"]))
    assert found.resolve() == target.resolve()


def test_resolve_config_path_accepts_pathlike_absolute(layout: dict[str, Path]) -> None:
    """An absolute path that exists is returned as is."""
    layout["script_config"].write_text("n_trials: 1\n")
    assert resolve_config_path(layout["script_config"], None) == layout["script_config"]


def test_resolve_config_path_skips_directories(layout: dict[str, Path]) -> None:
    """A directory with the config's name is not a config file."""
    layout["given"].mkdir()
    layout["beside_script"].write_text("n_trials: 1\n")
    assert resolve_config_path("config.yaml", str(layout["script"])).resolve() == layout["beside_script"].resolve()


def test_resolve_config_path_not_found_lists_every_place(layout: dict[str, Path]) -> None:
    """The not-found message lists the four places tried, in order, as absolute paths."""
    with pytest.raises(ConfigError) as info:
        resolve_config_path("config.yaml", str(layout["script"]))
    places = [layout[k] for k in ("given", "cwd_config", "script_config", "beside_script")]
    assert str(info.value) == "config.yaml: config file not found; tried: " + ", ".join(str(p) for p in places)


def test_resolve_config_path_not_found_without_defining_file(layout: dict[str, Path]) -> None:
    """Without a defining file only the working directory is searched."""
    with pytest.raises(ConfigError, match=r"config file not found; tried: ") as info:
        resolve_config_path("missing.yaml", None)
    cwd = layout["given"].parent
    assert str(info.value).endswith(f"tried: {cwd / 'missing.yaml'}, {cwd / 'config' / 'missing.yaml'}")


def test_resolve_config_path_absolute_missing_tries_once(tmp_path: Path) -> None:
    """A missing absolute path is tried once, not re-rooted elsewhere."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        resolve_config_path(str(missing), str(tmp_path / "script.py"))
    assert str(info.value) == f"{missing}: config file not found; tried: {missing}"


@pytest.mark.parametrize(
    ("text", "key", "ending"),
    [
        ("sweep_parameters:\n  lr: {type: float, low: 0.1, high: 1, lgo: true}\n", "sweep_parameters.lr.lgo",
         "allowed: type, low, high, log, step, when; did you mean 'log'?"),
        ("sweep_parameters:\n  lr: {type: float, low: 0.1, high: 1}\nenqueue:\n  - {rl: 0.5}\n", "enqueue[0].rl",
         "not a sweep parameter; sweep parameters: lr; did you mean 'lr'?"),
        ("tracking:\n  mlflow: {tracking_url: http://h:5000}\n", "tracking.mlflow.tracking_url",
         "unknown key; expected tracking_uri or experiment_name; did you mean 'tracking_uri'?"),
        ("pruner: {type: median, n_warmup_step: 3}\n", "pruner.n_warmup_step",
         "valid: n_startup_trials, n_warmup_steps, interval_steps, n_min_trials; did you mean 'n_warmup_steps'?"),
        ("sampler: randon\n", "sampler.type",
         "expected one of ['tpe', 'random', 'cmaes', 'gp', 'qmc', 'nsgaii', 'grid']; did you mean 'random'?"),
    ],
)
def test_a_typo_inside_a_section_names_the_setting(tmp_path: Path, text: str, key: str, ending: str) -> None:
    """Unknown keys inside sampler/pruner, a sweep parameter, enqueue and tracking were errors
    already; the error now names the likely setting."""
    path = write(tmp_path, f"n_trials: 3\n{text}")
    with pytest.raises(ConfigError) as info:
        load_config(path, [], cpu_count=2)
    assert info.value.key == key and info.value.message.endswith(ending), str(info.value)
