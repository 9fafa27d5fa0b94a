"""Unit tables for issue 12: ``--set`` reaches every key (dotted sweep names, pins, typos of
settings) and the new settings (``sampler.seed``, stop rules, ``verbosity``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hparam_joblib._errors import ConfigError, OverrideError
from hparam_joblib.config._load import load_config
from hparam_joblib.config._overrides import apply_overrides, parse_override, resolve_path
from hparam_joblib.config._schema import StopRules
from hparam_joblib.config._yaml import dump_yaml
from tests.unit.test_overrides import rejected

SWEPT: dict[str, Any] = {
    "n_trials": 10,
    "model": {"hidden": 3},
    "sweep_parameters": {
        "model.width": {"type": "int", "low": 1, "high": 8},
        "model.solver": {"type": "categorical", "choices": ["adam", "sgd"]},
        "model.momentum": {"type": "float", "low": 0.1, "high": 0.9, "when": {"model.solver": "sgd"}},
    },
}


def write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    """The mapping as ``mlp.yaml`` under tmp_path."""
    path = tmp_path / "mlp.yaml"
    path.write_text(dump_yaml(raw), encoding="utf-8")
    return path


def load(tmp_path: Path, raw: dict[str, Any], *sets: str) -> tuple[Any, list[str]]:
    """load_config with these --set items."""
    return load_config(write(tmp_path, raw), [parse_override(s) for s in sets], cpu_count=2)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('sweep_parameters."model.width".high=3', ("sweep_parameters", "model.width", "high")),
        ("sweep_parameters.'model.width'.high=3", ("sweep_parameters", "model.width", "high")),
        ('"a.b"=1', ("a.b",)),
        ('x."a.b".c=1', ("x", "a.b", "c")),
        ("plain.key=1", ("plain", "key")),
    ],
)
def test_quoted_parts_keep_their_dots(text: str, path: tuple[str, ...]) -> None:
    """A part in quotes is one name, dots and all."""
    assert parse_override(text).path == path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('a."b.c=1', r"the quote \" is not closed"),
        ('a"b".c=1', r"a quote may only start a name"),
        ('"a"b=1', r"a quoted name must be followed by '\.' or '='"),
        ('a."".c=1', r"has an empty part"),
    ],
)
def test_bad_quoted_keys(text: str, message: str) -> None:
    """Malformed quoting is an OverrideError naming the item."""
    rejected(text, message)


@pytest.mark.parametrize(
    ("text", "resolved"),
    [
        ("sweep_parameters.model.width.step=2", ("sweep_parameters", "model.width", "step")),
        ("sweep_parameters.model.width.high=16", ("sweep_parameters", "model.width", "high")),
        ("sweep_parameters.model.width=null", ("sweep_parameters", "model.width")),
        ("sweep_parameters.model.momentum.when.model.solver=adam",
         ("sweep_parameters", "model.momentum", "when", "model.solver")),
        # a new parameter: everything before the setting name is its (dotted) name
        ("sweep_parameters.model.depth.high=4", ("sweep_parameters", "model.depth", "high")),
        ("sweep_parameters.model.depth={type: int}", ("sweep_parameters", "model.depth")),
        ("model.hidden=4", ("model", "hidden")),
        ("model.new.deep=4", ("model", "new", "deep")),
    ],
)
def test_dotted_sweep_names_resolve(text: str, resolved: tuple[str, ...]) -> None:
    """Unquoted parts that name an existing dotted key reach it; new sweep names are joined."""
    assert resolve_path(SWEPT, parse_override(text).path) == resolved


@pytest.mark.parametrize(
    ("sets", "name", "describe"),
    [
        (["sweep_parameters.model.width.step=2"], "model.width", "int [1, 8] step 2"),
        (["sweep_parameters.model.width.high=16"], "model.width", "int [1, 16]"),
        (['sweep_parameters."model.width".high=16'], "model.width", "int [1, 16]"),
        (["sweep_parameters.model.width={type: int, low: 2, high: 4}"], "model.width", "int [2, 4]"),
        (["sweep_parameters.model.width={type: categorical, choices: [8, 16]}"], "model.width", "categorical [8, 16]"),
        (["sweep_parameters.model.depth={type: int, low: 1, high: 3}"], "model.depth", "int [1, 3]"),
        (["sweep_parameters.model.momentum.when.model.solver=adam"], "model.momentum",
         "float [0.1, 0.9] when model.solver == 'adam'"),
    ],
)
def test_set_changes_dotted_sweep_parameters(tmp_path: Path, sets: list[str], name: str, describe: str) -> None:
    """The issue's commands change the dotted sweep parameter, with no note."""
    cfg, notes = load(tmp_path, SWEPT, *sets)
    assert {p.name: p.describe() for p in cfg.params}[name] == describe
    assert notes == []


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("sweep_parameters.model.width.step=0", r"sweep_parameters\.model\.width\.step: must be > 0, got 0"),
        ("sweep_parameters.model.width.high=0", r"sweep_parameters\.model\.width\.high: \(0\) must be > low \(1\)"),
        ("sweep_parameters.model.width=null",
         (r"sweep_parameters\.model\.width: must be a mapping with a 'type' .*got None; "
         r"to fix its value for this run instead: --set model\.width=VALUE")),
        ("sweep_parameters.model.width={type: int, low: 1}", r"sweep_parameters\.model\.width\.high: is required"),
        ("sweep_parameters.model.width.typ=int", r"sweep_parameters\.model\.width\.typ: unknown setting"),
        ('sweep_parameters."model.width".low=x', r"sweep_parameters\.model\.width\.low: must be a number, got 'x'"),
    ],
)
def test_errors_name_the_set_item(tmp_path: Path, item: str, message: str) -> None:
    """An error caused by a --set item names that item, not just the file."""
    with pytest.raises(ConfigError, match=message) as info:
        load(tmp_path, SWEPT, item)
    assert str(info.value).startswith(f"{tmp_path / 'mlp.yaml'} (with --set {item!r}): ")


def test_pin_removes_the_parameter_and_fixes_its_value(tmp_path: Path) -> None:
    """--set <swept name>=value pins it: not searched, in every trial's config, one note."""
    cfg, notes = load(tmp_path, SWEPT, "model.solver=sgd")
    assert [p.name for p in cfg.params] == ["model.width", "model.momentum"]
    assert cfg.fixed["model"] == {"hidden": 3, "solver": "sgd"}
    # the condition on the pinned parameter holds: it is dropped, the parameter stays
    assert {p.name: p.when for p in cfg.params}["model.momentum"] == ()
    assert notes == [
        ("--set model.solver=sgd: pins sweep parameter model.solver to 'sgd' for this run "
        "(not searched; every trial's config has this value)")
    ]
    assert "model.solver" not in cfg.resolved["sweep_parameters"]


def test_pin_drops_parameters_whose_condition_fails(tmp_path: Path) -> None:
    """A parameter conditioned on another value of the pinned one leaves the space, with a note."""
    cfg, notes = load(tmp_path, SWEPT, "model.solver=adam")
    assert [p.name for p in cfg.params] == ["model.width"]
    assert notes[1] == (
        "sweep parameter model.momentum is not searched in this run: its condition "
        "(model.solver='sgd') is false for the pinned value(s)"
    )


def test_pin_strips_enqueue_entries(tmp_path: Path) -> None:
    """Enqueued values of a pinned parameter are dropped (an entry left empty goes)."""
    raw = {**SWEPT, "enqueue": [{"model.width": 4}, {"model": {"width": 2, "solver": "sgd"}}, {"model.width": 3, "model.solver": "adam"}]}
    cfg, _ = load(tmp_path, raw, "model.width=5")
    assert cfg.enqueue == ({"model.solver": "sgd"}, {"model.solver": "adam"})
    assert cfg.fixed["model"]["width"] == 5


def test_pin_of_a_top_level_sweep_name(tmp_path: Path) -> None:
    """A plain (undotted) sweep name pins the same way."""
    raw = {"n_trials": 3, "sweep_parameters": {"lr": {"type": "float", "low": 0.1, "high": 1.0}}}
    cfg, notes = load(tmp_path, raw, "lr=0.5")
    assert cfg.params == () and cfg.fixed["lr"] == 0.5 and len(notes) == 1


@pytest.mark.parametrize(
    ("item", "setting"),
    [("n_job=4", "n_jobs"), ("n_trails=5", "n_trials"), ("sed=3", "seed"), ("timout=60", "timeout"),
     ("trial_timout=9", "trial_timeout"), ("samplr.type=random", "sampler")],
)
def test_set_typo_of_a_setting_is_an_error(tmp_path: Path, item: str, setting: str) -> None:
    """A --set key not in the file, one edit from a setting, stops the run with 'did you mean'."""
    with pytest.raises(OverrideError, match=rf"did you mean {setting!r}") as info:
        load(tmp_path, SWEPT, item)
    assert str(info.value).startswith(f"--set {item!r}: ")


def test_set_typo_key_listed_in_the_file_is_allowed(tmp_path: Path) -> None:
    """A key the file lists in not_settings is the user's own fixed parameter, even if it looks
    like a typo; the same key in the file without the list is the file's typo (an error)."""
    cfg, notes = load(tmp_path, {**SWEPT, "n_job": 1, "not_settings": ["n_job"]}, "n_job=4")
    assert cfg.fixed["n_job"] == 4
    assert not any(n.startswith("--set") for n in notes)
    cfg, _ = load(tmp_path, {**SWEPT, "not_settings": ["n_job"]}, "n_job=4")  # new key, listed
    assert cfg.fixed["n_job"] == 4
    with pytest.raises(ConfigError, match=r"mlp.yaml \(with --set 'n_job=4'\): n_job: not a setting, .*"
                       r"did you mean 'n_jobs'\? If n_job is for your function, list it: not_settings: \[n_job\]$"):
        load(tmp_path, {**SWEPT, "n_job": 1}, "n_job=4")


@pytest.mark.parametrize(
    "item", ["trial_timeout=1", "timeout=60", "seed=3", "lock_timeout=30", "sampler.type=random",
             "pruner={type: median}", "verbosity=quiet", "stop_no_improvement=5", "max_worker_deaths=2"],
)
def test_documented_settings_are_never_new_keys(tmp_path: Path, item: str) -> None:
    """A reserved key absent from the file is a setting, never noted as a new key."""
    _, notes = load(tmp_path, SWEPT, item)
    assert notes == []


def test_new_fixed_key_is_noted(tmp_path: Path) -> None:
    """A genuinely new fixed key still gets its one-line note."""
    cfg, notes = load(tmp_path, SWEPT, "model.dropout=0.1")
    assert notes == ["--set model.dropout: not in mlp.yaml; added it as a new key"]
    assert cfg.fixed["model"]["dropout"] == 0.1


@pytest.mark.parametrize(
    ("extra", "seed"),
    [
        ({"sampler": {"type": "random", "seed": 1}}, 1),
        ({"sampler": {"type": "tpe", "seed": 7}, "seed": 7}, 7),
        ({"sampler": {"type": "random", "seed": None}, "seed": 4}, 4),
        ({"seed": 5}, 5),
    ],
)
def test_sampler_seed_is_the_base_seed(tmp_path: Path, extra: dict[str, Any], seed: int) -> None:
    """Optuna's own sampler.seed is accepted and means the top-level seed."""
    cfg, _ = load(tmp_path, {**SWEPT, **extra})
    assert cfg.seed == seed
    assert "seed" not in dict(cfg.sampler.options)
    assert cfg.resolved["seed"] == seed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sampler": {"type": "random", "seed": 1}, "seed": 2},
         r"sampler\.seed: is 1 but the top-level seed is 2; they mean the same"),
        ({"sampler": {"type": "random", "seed": "x"}}, r"sampler\.seed: must be an integer >= 0, got 'x'"),
        ({"sampler": {"type": "random", "seed": -3}}, r"sampler\.seed: must be an integer >= 0, got -3"),
    ],
)
def test_sampler_seed_rejected(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    """Two different base seeds, or a bad one, are an error naming sampler.seed."""
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, {**SWEPT, **extra})


@pytest.mark.parametrize(
    ("extra", "rules"),
    [
        ({}, StopRules()),
        ({"timeout": 60}, StopRules(timeout=60.0)),
        ({"timeout": 1.5, "stop_grace": 5}, StopRules(timeout=1.5, grace=5.0)),
        ({"stop_no_improvement": 10}, StopRules(no_improvement=10)),
        ({"stop_at_value": 0.95}, StopRules(at_value=0.95)),
        ({"stop_at_value": -1}, StopRules(at_value=-1.0)),
    ],
)
def test_stop_rules_accepted(tmp_path: Path, extra: dict[str, Any], rules: StopRules) -> None:
    """The stop-rule keys are study settings (not passed to the function)."""
    cfg, _ = load(tmp_path, {**SWEPT, **extra})
    assert cfg.stop == rules
    assert not set(extra) & set(cfg.fixed)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"timeout": 0}, r"timeout: must be a number of seconds > 0, got 0"),
        ({"timeout": "soon"}, r"timeout: must be a number, got 'soon'"),
        ({"stop_grace": -1}, r"stop_grace: must be a number of seconds > 0"),
        ({"stop_no_improvement": 0}, r"stop_no_improvement: must be an integer >= 1, got 0"),
        ({"stop_no_improvement": 2.5}, r"stop_no_improvement: must be an integer >= 1"),
        ({"stop_at_value": "high"}, r"stop_at_value: must be a number, got 'high'"),
        ({"stop_at_value": 1, "directions": ["minimize", "maximize"]}, r"stop_at_value: needs one objective"),
        ({"verbosity": "loud"}, r"verbosity: must be one of \['quiet', 'normal', 'verbose'\], got 'loud'"),
    ],
)
def test_stop_rules_and_verbosity_rejected(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    """Bad stop rules or verbosity are one ConfigError naming the key."""
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, {**SWEPT, **extra})


@pytest.mark.parametrize("value", ["quiet", "normal", "verbose", "VERBOSE"])
def test_verbosity_accepted(tmp_path: Path, value: str) -> None:
    """verbosity takes quiet, normal or verbose."""
    cfg, _ = load(tmp_path, {**SWEPT, "verbosity": value})
    assert cfg.verbosity == value.lower()


def test_apply_overrides_reaches_existing_dotted_key() -> None:
    """apply_overrides writes into the existing dotted key, never splits it into a path."""
    result, created = apply_overrides(SWEPT, [parse_override("sweep_parameters.model.width.high=16")])
    assert result["sweep_parameters"]["model.width"] == {"type": "int", "low": 1, "high": 16}
    assert "model" not in result["sweep_parameters"]
    assert created == []
    assert SWEPT["sweep_parameters"]["model.width"]["high"] == 8  # the input is untouched


MEDIAN = {**SWEPT, "pruner": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 2}}
TPE = {**SWEPT, "sampler": {"type": "tpe", "n_startup_trials": 4, "multivariate": True, "seed": 3}}


@pytest.mark.parametrize(
    ("raw", "item", "expected", "note"),
    [
        (MEDIAN, "pruner.type=none", "none", ("--set pruner.type=none: dropped pruner.n_startup_trials, "
         "pruner.n_warmup_steps (settings of the median pruner that the none pruner does not take)")),
        (MEDIAN, "pruner=none", "none", None),
        (MEDIAN, "pruner=null", "none", None),
        (MEDIAN, "pruner.type=NONE", "none", ("--set pruner.type=none: dropped pruner.n_startup_trials, "
         "pruner.n_warmup_steps (settings of the median pruner that the none pruner does not take)")),
        # settings both types take are kept
        (MEDIAN, "pruner.type=percentile pruner.percentile=25",
         "percentile (n_startup_trials=5, n_warmup_steps=2, percentile=25)", None),
        ({**SWEPT, "pruner": "median"}, "pruner.type=none", "none", None),
        ({**SWEPT, "pruner": None}, "pruner.type=median", "median", None),
        (SWEPT, "pruner.type=median", "median", None),
        (TPE, "sampler.type=random", "random", ("--set sampler.type=random: dropped sampler.n_startup_trials, "
         "sampler.multivariate (settings of the tpe sampler that the random sampler does not take)")),
        (TPE, "sampler=random", "random", None),
        (TPE, "sampler=tpe", "tpe (n_startup_trials=10)", None),
        (TPE, "sampler.type=nsgaii", "nsgaii", ("--set sampler.type=nsgaii: dropped sampler.n_startup_trials, "
         "sampler.multivariate (settings of the tpe sampler that the nsgaii sampler does not take)")),
        ({**SWEPT, "sampler": "tpe"}, "sampler.type=random", "random", None),
        (SWEPT, "sampler.type=random", "random", None),
    ],
)
def test_set_switches_the_sampler_or_pruner(
    tmp_path: Path, raw: dict[str, Any], item: str, expected: str, note: str | None
) -> None:
    """--set that changes a block's type drops the file's settings the new type does not take."""
    cfg, notes = load(tmp_path, raw, *item.split())
    spec = cfg.pruner if item.startswith("pruner") else cfg.sampler
    assert spec.describe() == expected
    assert notes == ([note] if note else [])
    if item.startswith("sampler.type") and raw is TPE:
        assert cfg.seed == 3  # the base seed (sampler.seed) is kept: it is no type's own setting


@pytest.mark.parametrize(
    ("raw", "items", "key", "message"),
    [
        (MEDIAN, ("pruner.type=none", "pruner.n_startup_trials=3"), "pruner.n_startup_trials",
         ("unknown setting for the none pruner; valid: none (n_startup_trials is a setting of the median / "
         "percentile pruner). To switch the pruner, give only its type: pruner: none in the file, or "
         "--set pruner.type=none (which drops the old type's settings)")),
        ({**SWEPT, "pruner": {"type": "none", "n_warmup_steps": 3}}, (), "pruner.n_warmup_steps",
         ("unknown setting for the none pruner; valid: none (n_warmup_steps is a setting of the median / "
         "percentile / threshold pruner). To switch the pruner, give only its type: pruner: none in the file, or "
         "--set pruner.type=none (which drops the old type's settings)")),
        (MEDIAN, ("pruner.n_startup_trails=3",), "pruner.n_startup_trails",
         ("unknown setting for the median pruner; valid: n_startup_trials, n_warmup_steps, interval_steps, "
         "n_min_trials; did you mean 'n_startup_trials'?")),
    ],
)
def test_a_setting_for_the_wrong_type_is_an_error(
    tmp_path: Path, raw: dict[str, Any], items: tuple[str, ...], key: str, message: str
) -> None:
    """A setting given explicitly (file or --set) for a type that does not take it stays an error,
    and the error says how to switch."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, raw, *items)
    assert info.value.key == key and info.value.message == message
