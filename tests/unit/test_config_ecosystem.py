"""Unit tables for samplers, pruners, conditions, enqueue and directions (and report() outside a
search): YAML mappings against the expected config objects and the expected error paths."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import optuna
import pytest

from hparam_joblib import current_trial_number, report
from hparam_joblib._errors import ConfigError
from hparam_joblib._result import BestTrial, SearchResult
from hparam_joblib.config._algorithms import AlgorithmSpec, build, settable, worker_seed
from hparam_joblib.config._load import load_config
from hparam_joblib.config._schema import ParamSpec, SearchConfig
from hparam_joblib.config._space import build_config, suggest_all
from hparam_joblib.config._validate import validate
from hparam_joblib.runtime.launcher._enqueue import enqueue_keys
from hparam_joblib.runtime.launcher._progress import format_summary
from hparam_joblib.runtime.loops._objective import _fit_directions

SRC = "config.yaml"
SPACE = {
    "x": {"type": "float", "low": 0.0, "high": 1.0},
    "n": {"type": "int", "low": 1, "high": 4},
    "opt": {"type": "categorical", "choices": ["SGD", "Adam", "RMSprop"]},
}


def check(**extra: Any) -> SearchConfig:
    raw: dict[str, Any] = {"n_trials": 8, "sweep_parameters": dict(SPACE)}
    raw.update(extra)
    return validate(raw, SRC, cpu_count=2)


def with_params(**params: Any) -> dict[str, Any]:
    return {"sweep_parameters": {**SPACE, **params}}


# --- samplers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (None, AlgorithmSpec("sampler", "tpe", (("n_startup_trials", 10),))),
        ("random", AlgorithmSpec("sampler", "random")),
        ({"type": "TPE"}, AlgorithmSpec("sampler", "tpe", (("n_startup_trials", 10),))),
        ({"type": "tpe", "n_startup_trials": 3, "multivariate": True},
         AlgorithmSpec("sampler", "tpe", (("n_startup_trials", 3), ("multivariate", True)))),
        ({"type": "nsgaii", "population_size": 10, "crossover_prob": 1},
         AlgorithmSpec("sampler", "nsgaii", (("population_size", 10), ("crossover_prob", 1)))),
        ({"type": "qmc", "qmc_type": "halton", "scramble": True},
         AlgorithmSpec("sampler", "qmc", (("qmc_type", "halton"), ("scramble", True)))),
    ],
)
def test_sampler_accepted(block: Any, expected: AlgorithmSpec) -> None:
    """A sampler block becomes a type and checked keyword arguments (TPE gets n_startup_trials)."""
    cfg = check(**({} if block is None else {"sampler": block}))
    assert cfg.sampler == expected


def test_top_level_n_startup_trials_reaches_tpe_and_samplers_that_take_it() -> None:
    """n_startup_trials at the top drives TPE and, when set, cmaes/gp; the block's own wins."""
    assert check(n_startup_trials=4).sampler.kwargs == {"n_startup_trials": 4}
    assert check(sampler={"type": "tpe", "n_startup_trials": 2}, n_startup_trials=4).sampler.kwargs == {
        "n_startup_trials": 2
    }
    if importlib.util.find_spec("cmaes"):
        assert check(sampler="cmaes").sampler.kwargs == {}
        assert check(sampler="cmaes", n_startup_trials=4).sampler.kwargs == {"n_startup_trials": 4}
    assert check(sampler="random", n_startup_trials=4).sampler.kwargs == {}


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "annealing"}, r"sampler\.type: unknown sampler 'annealing'; expected one of \['tpe', 'random', 'cmaes', 'gp', 'qmc', 'nsgaii', 'grid'\]$"),
        (3, r"sampler: must be a mapping with a 'type'"),
        ({"type": "tpe", "n_startup": 3},
         r"sampler\.n_startup: unknown setting for the tpe sampler; valid: consider_prior, .*n_startup_trials.*constant_liar$"),
        ({"type": "random", "population_size": 3},
         (r"sampler\.population_size: unknown setting for the random sampler; valid: none \(population_size is a "
         r"setting of the nsgaii sampler\)\. To switch the sampler, give only its type: sampler: random in the "
         r"file, or --set sampler\.type=random \(which drops the old type's settings\)$")),
        ({"type": "tpe", "gamma": 0.1}, r"sampler\.gamma: takes a Python object, which a YAML file cannot give"),
        ({"type": "nsgaii", "mutation": "x"}, r"sampler\.mutation: takes a Python object"),
        ({"type": "tpe", "seed": -1}, r"sampler\.seed: must be an integer >= 0, got -1"),
        ({"type": "tpe", "n_startup_trials": "3"}, r"sampler\.n_startup_trials: must be int, got '3'"),
        ({"type": "tpe", "multivariate": 1}, r"sampler\.multivariate: must be NoneType or bool, got 1"),
        ({"type": "nsgaii", "population_size": 1}, r"sampler: the nsgaii sampler rejects these settings: .*population_size"),
        ({"type": "qmc", "qmc_type": "lattice"}, r"sampler: the qmc sampler rejects these settings: .*halton"),
        ({"type": "grid", "search_space": {}}, r"sampler\.search_space: cannot be set here: the grid is derived from sweep_parameters"),
    ],
)
def test_sampler_rejected(block: Any, message: str) -> None:
    """Unknown types and arguments, objects YAML cannot express, bad values: one clear line."""
    with pytest.raises(ConfigError, match=rf"^config\.yaml: {message}"):
        check(sampler=block)


def test_unknown_random_argument_lists_none_valid() -> None:
    """RandomSampler takes only a seed (managed), so 'valid: none'."""
    with pytest.raises(ConfigError, match=r"valid: none$"):
        check(sampler={"type": "random", "foo": 1})


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_gp_without_torch_names_the_package() -> None:
    """The gp sampler needs torch: a config error naming the pip package, not an ImportError later."""
    with pytest.raises(ConfigError, match=r"sampler\.type: the gp sampler needs the 'torch' package.*pip install torch$"):
        check(sampler="gp")


def test_cmaes_refuses_several_objectives() -> None:
    """CMA-ES optimises one objective."""
    with pytest.raises(ConfigError, match=r"sampler\.type: the cmaes sampler optimises one objective"):
        check(sampler="cmaes", directions=["minimize", "maximize"])


def test_grid_is_derived_from_the_space() -> None:
    """int ranges, float steps and categorical choices become the grid's search space."""
    cfg = check(sampler="grid", sweep_parameters={
        "x": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
        "n": {"type": "int", "low": 2, "high": 8, "step": 3},
        "opt": {"type": "categorical", "choices": ["SGD", "Adam"]},
    })
    assert cfg.sampler.grid == (
        ("x", (0.0, 0.25, 0.5, 0.75, 1.0)), ("n", (2, 5, 8)), ("opt", ("SGD", "Adam")),
    )
    assert "30 grid points" in cfg.sampler.describe()


def test_grid_float_without_step_names_the_parameter() -> None:
    """A float without a step has no grid: the error names that parameter."""
    with pytest.raises(ConfigError, match=r"^config\.yaml: sweep_parameters\.x: the grid sampler needs a step"):
        check(sampler="grid")


def test_grid_smaller_than_n_trials_is_a_note(tmp_path: Path) -> None:
    """n_trials above the grid size is allowed, with a note that points repeat."""
    path = tmp_path / "c.yaml"
    path.write_text("n_trials: 5\nsampler: grid\nsweep_parameters:\n  c: {type: categorical, choices: [a, b]}\n")
    _, notes = load_config(path, [], 2)
    assert any("the grid has 2 points but n_trials is 5" in n for n in notes)


def test_grid_and_enqueue_do_not_mix() -> None:
    """The grid already decides every trial."""
    with pytest.raises(ConfigError, match=r"enqueue: cannot be combined with the grid sampler"):
        check(sampler="grid", sweep_parameters={"n": SPACE["n"]}, enqueue=[{"n": 2}])


@pytest.mark.parametrize(
    ("type_name", "index", "seed", "expected"),
    [("tpe", 0, 5, 5), ("tpe", 3, 5, 8), ("random", 1, None, None), ("grid", 3, 5, 5),
     ("grid", 1, None, 0), ("qmc", 2, 7, 7)],
)
def test_worker_seed(type_name: str, index: int, seed: int | None, expected: int | None) -> None:
    """seed + worker index; grid and qmc workers share one seed so they agree on the points."""
    assert worker_seed(AlgorithmSpec("sampler", type_name), seed, index) == expected


def test_built_objects_are_the_named_optuna_classes() -> None:
    """build() returns the Optuna class with the block's arguments."""
    sampler = build(check(sampler={"type": "tpe", "n_startup_trials": 3}).sampler, seed=1)
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._n_startup_trials == 3
    pruner = build(check(pruner={"type": "median", "n_warmup_steps": 2}).pruner)
    assert isinstance(pruner, optuna.pruners.MedianPruner) and pruner._n_warmup_steps == 2
    assert isinstance(build(check().pruner), optuna.pruners.NopPruner)
    assert "n_startup_trials" in settable("sampler", "tpe") and "seed" not in settable("sampler", "tpe")


# --- pruners ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (None, AlgorithmSpec("pruner", "none")),
        ("median", AlgorithmSpec("pruner", "median")),
        ({"type": "percentile", "percentile": 25.0}, AlgorithmSpec("pruner", "percentile", (("percentile", 25.0),))),
        ({"type": "successive_halving", "min_resource": "auto"},
         AlgorithmSpec("pruner", "successive_halving", (("min_resource", "auto"),))),
        ({"type": "hyperband", "max_resource": 27}, AlgorithmSpec("pruner", "hyperband", (("max_resource", 27),))),
        ({"type": "threshold", "upper": 1.0}, AlgorithmSpec("pruner", "threshold", (("upper", 1.0),))),
    ],
)
def test_pruner_accepted(block: Any, expected: AlgorithmSpec) -> None:
    """Each pruner type with its checked keyword arguments."""
    assert check(**({} if block is None else {"pruner": block})).pruner == expected


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "patient"}, r"pruner\.type: unknown pruner 'patient'; expected one of \['none', 'median', 'percentile', 'successive_halving', 'hyperband', 'threshold'\]"),
        ({"type": "median", "patience": 2}, r"pruner\.patience: unknown setting for the median pruner; valid: n_startup_trials, n_warmup_steps, interval_steps, n_min_trials$"),
        ({"type": "percentile"}, r"pruner: the percentile pruner needs percentile$"),
        ({"type": "threshold"}, r"pruner: the threshold pruner rejects these settings: Either lower or upper"),
        ({"type": "median", "n_startup_trials": -1}, r"pruner: the median pruner rejects these settings: .*negative"),
        ({"type": "none", "x": 1}, r"pruner\.x: unknown setting for the none pruner; valid: none$"),
    ],
)
def test_pruner_rejected(block: Any, message: str) -> None:
    """Unknown pruners and arguments, missing required ones, bad values."""
    with pytest.raises(ConfigError, match=rf"^config\.yaml: {message}"):
        check(pruner=block)


def test_pruner_refuses_several_objectives() -> None:
    """Optuna cannot prune a multi-objective study; pruner none is fine."""
    with pytest.raises(ConfigError, match=r"pruner\.type: pruning needs one objective"):
        check(pruner="median", directions=["minimize", "maximize"])
    assert check(pruner="none", directions=["minimize", "maximize"]).pruner.type == "none"


# --- directions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, ("minimize",)),
        ({"directions": ["maximize"]}, ("maximize",)),
        ({"directions": ["Minimize", "maximize"]}, ("minimize", "maximize")),
    ],
)
def test_directions_accepted(extra: dict[str, Any], expected: tuple[str, ...]) -> None:
    """directions is a list; direction stays the first one."""
    cfg = check(**extra)
    assert cfg.directions == expected and cfg.direction == expected[0]
    assert cfg.multi_objective == (len(expected) > 1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"directions": ["minimize"], "direction": "minimize"}, r"directions: give either direction .* not both"),
        ({"directions": []}, r"directions: must be a non-empty list"),
        ({"directions": "minimize"}, r"directions: must be a non-empty list"),
        ({"directions": ["minimize", "up"]}, r"directions\[1\]: must be one of \['minimize', 'maximize'\], got 'up'"),
    ],
)
def test_directions_rejected(extra: dict[str, Any], message: str) -> None:
    """Both keys, an empty or scalar list, an unknown direction."""
    with pytest.raises(ConfigError, match=rf"^config\.yaml: {message}"):
        check(**extra)


@pytest.mark.parametrize(
    ("value", "n", "expected"),
    [(0.5, 1, 0.5), ([0.5], 1, 0.5), ([1.0, 2.0], 2, [1.0, 2.0])],
)
def test_return_fits_directions(value: Any, n: int, expected: Any) -> None:
    """One number for one objective, a list of n for n."""
    assert _fit_directions(value, n) == (expected, "")


@pytest.mark.parametrize(
    ("value", "n", "reason"),
    [(0.5, 2, "returned one value 0.5, but directions has 2"),
     ([1.0], 2, "returned 1 value [1.0], but directions has 2"),
     ([1.0, 2.0, 3.0], 2, "returned 3 values [1.0, 2.0, 3.0], but directions has 2"),
     ([1.0, 2.0], 1, "returned 2 values [1.0, 2.0], but directions has 1")],
)
def test_wrong_length_return_is_a_failure_reason(value: Any, n: int, reason: str) -> None:
    """A return of the wrong length is the trial's failure, with a reason naming both lengths."""
    assert _fit_directions(value, n) == (None, f"the training function {reason}")


def _result(**kw: Any) -> SearchResult:
    base: dict[str, Any] = {
        "study_name": "s", "storage_url": "sqlite:////tmp/s.db", "db_path": "/tmp/s.db", "n_trials": 3,
        "counts": {"COMPLETE": 3}, "best_value": None, "best_params": {}, "best_config": {},
        "best_trial_number": None, "wall_time": 1.0,
    }
    base.update(kw)
    return SearchResult(**base)


def test_summary_prints_a_short_pareto_front() -> None:
    """Several objectives: 'pareto front' with at most 5 trials, no 'best value' line."""
    front = tuple(BestTrial(i, (float(i), 1.0 - i), {"x": i}) for i in range(7))
    text = format_summary(_result(directions=("minimize", "maximize"), best_trials=front))
    assert "pareto front: 7 trial(s) (minimize, maximize)" in text
    assert "trial 4: [4, -3]  x=4" in text and "trial 5:" not in text
    assert "... and 2 more" in text and "best value" not in text


# --- conditions ---------------------------------------------------------------------------------


def test_conditions_parse_and_sort_topologically() -> None:
    """A parameter may be declared before the one its condition names; the order follows."""
    cfg = check(sweep_parameters={
        "momentum": {"type": "float", "low": 0.0, "high": 0.9, "when": {"opt": "SGD"}},
        "width": {"type": "int", "low": 8, "high": 64, "when": {"n": [2, 3], "opt": ["SGD", "Adam"]}},
        **SPACE,
    })
    assert [p.name for p in cfg.params] == ["x", "n", "opt", "momentum", "width"]
    by = {p.name: p for p in cfg.params}
    assert by["momentum"].when == (("opt", ("SGD",)),)
    assert by["width"].when == (("n", (2, 3)), ("opt", ("SGD", "Adam")))
    assert by["width"].describe() == "int [8, 64] when n in [2, 3] and opt in ['SGD', 'Adam']"
    assert by["momentum"].active({"opt": "SGD"}) and not by["momentum"].active({"opt": "Adam"})
    assert not by["momentum"].active({})


def test_declaration_order_is_kept_without_conditions() -> None:
    """No condition: the declared order, as before."""
    assert [p.name for p in check().params] == ["x", "n", "opt"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"m": {"type": "int", "low": 1, "high": 2, "when": {"optimizer": "SGD"}}},
         r"sweep_parameters\.m\.when\.optimizer: names no sweep parameter; sweep parameters: x, n, opt, m"),
        ({"m": {"type": "int", "low": 1, "high": 2, "when": {"opt": "Adagrad"}}},
         r"sweep_parameters\.m\.when\.opt: 'Adagrad' is not a value opt can take \(choices \['SGD', 'Adam', 'RMSprop'\]\)"),
        ({"m": {"type": "int", "low": 1, "high": 2, "when": {"opt": ["SGD", "sgd"]}}},
         r"sweep_parameters\.m\.when\.opt: 'sgd' is not a value"),
        ({"m": {"type": "int", "low": 1, "high": 2, "when": {"n": 7}}},
         r"sweep_parameters\.m\.when\.n: 7 is not a value n can take \(int \[1, 4\]\)"),
        ({"m": {"type": "int", "low": 1, "high": 2, "when": {"n": True}}}, r"sweep_parameters\.m\.when\.n: True is not a value"),
        ({"m": {"type": "int", "low": 1, "high": 2, "when": {"x": 0.5}}},
         r"sweep_parameters\.m\.when\.x: x is a float parameter; conditions can name only categorical or int"),
        ({"m": {"type": "int", "low": 1, "high": 2, "when": "opt == SGD"}}, r"sweep_parameters\.m\.when: must be a mapping"),
        ({"m": {"type": "int", "low": 1, "high": 2, "when": {}}}, r"sweep_parameters\.m\.when: must be a mapping"),
        ({"m": {"type": "int", "low": 1, "high": 2, "when": {"opt": []}}}, r"sweep_parameters\.m\.when\.opt: is an empty list"),
        ({"m": {"type": "int", "low": 1, "high": 2, "when": {"m": 1}}},
         r"sweep_parameters\.m\.when: conditions form a cycle: m -> m"),
        ({"a": {"type": "int", "low": 1, "high": 2, "when": {"b": 1}},
          "b": {"type": "int", "low": 1, "high": 2, "when": {"c": 2}},
          "c": {"type": "int", "low": 1, "high": 2, "when": {"a": 1}}},
         r"sweep_parameters\.a\.when: conditions form a cycle: a -> b -> c -> a"),
    ],
)
def test_conditions_rejected(params: dict[str, Any], message: str) -> None:
    """Unknown names, impossible values, float targets, malformed blocks and cycles."""
    with pytest.raises(ConfigError, match=rf"^config\.yaml: {message}"):
        check(**with_params(**params))


def test_suggest_all_skips_parameters_whose_condition_is_false() -> None:
    """A real in-memory Optuna trial: the conditional parameter is sampled only when it holds,
    and absent from the params and from the built config otherwise."""
    cfg = check(sweep_parameters={
        "opt": {"type": "categorical", "choices": ["SGD", "Adam"]},
        "sgd.momentum": {"type": "float", "low": 0.0, "high": 0.9, "when": {"opt": "SGD"}},
    })
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        sampled = suggest_all(trial, cfg.params)
        config = build_config(cfg.fixed, sampled)
        sgd = sampled["opt"] == "SGD"
        seen.add(sgd)
        assert ("sgd.momentum" in trial.params) == sgd == ("sgd" in config)
        study.tell(trial, 0.0)
    assert seen == {True, False}


# --- enqueue ------------------------------------------------------------------------------------


def test_enqueue_accepts_dotted_and_nested_names() -> None:
    """Entries are flattened to dotted sweep names."""
    cfg = check(
        sweep_parameters={**SPACE, "model.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        enqueue=[{"x": 0.5, "opt": "SGD"}, {"model": {"lr": 0.01}}, {"model.lr": 0.001, "n": 2}],
    )
    assert [dict(e) for e in cfg.enqueue] == [
        {"x": 0.5, "opt": "SGD"}, {"model.lr": 0.01}, {"model.lr": 0.001, "n": 2},
    ]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"x": 0.5}, r"enqueue: must be a list of parameter mappings"),
        ([{}], r"enqueue\[0\]: must be a non-empty mapping"),
        (["x"], r"enqueue\[0\]: must be a non-empty mapping"),
        ([{"x": 0.5}, {"lr": 0.1}], r"enqueue\[1\]\.lr: not a sweep parameter; sweep parameters: x, n, opt$"),
        ([{"x": 1.5}], r"enqueue\[0\]\.x: 1\.5 is not in the space of x \(float \[0\.0, 1\.0\]\)"),
        ([{"x": "half"}], r"enqueue\[0\]\.x: 'half' is not in the space"),
        ([{"n": 2.5}], r"enqueue\[0\]\.n: 2\.5 is not in the space of n"),
        ([{"n": True}], r"enqueue\[0\]\.n: True is not in the space"),
        ([{"opt": "Adagrad"}], r"enqueue\[0\]\.opt: 'Adagrad' is not in the space of opt \(categorical"),
    ],
)
def test_enqueue_rejected(entries: Any, message: str) -> None:
    """Names and values are checked against the space at load."""
    with pytest.raises(ConfigError, match=rf"^config\.yaml: {message}"):
        check(enqueue=entries)


def test_enqueue_step_and_condition_checks() -> None:
    """Values off a step are refused; a value whose condition is false in the entry is refused."""
    params = {
        "x": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
        "opt": {"type": "categorical", "choices": ["SGD", "Adam"]},
        "momentum": {"type": "float", "low": 0.0, "high": 0.9, "when": {"opt": "SGD"}},
    }
    assert check(sweep_parameters=params, enqueue=[{"x": 0.75}, {"momentum": 0.5}]).enqueue
    with pytest.raises(ConfigError, match=r"enqueue\[0\]\.x: 0\.3 is not in the space of x"):
        check(sweep_parameters=params, enqueue=[{"x": 0.3}])
    with pytest.raises(ConfigError, match=re.escape("enqueue[0].momentum: is never used: its condition (opt == 'SGD')")):
        check(sweep_parameters=params, enqueue=[{"opt": "Adam", "momentum": 0.5}])


def test_enqueue_keys_are_stable_and_count_repeats() -> None:
    """The same entry twice gets two keys; the key does not depend on position or key order."""
    a, b = {"x": 0.5, "opt": "SGD"}, {"opt": "SGD", "x": 0.5}
    keys = enqueue_keys(({"n": 1}, a, b))
    assert keys[1] != keys[2] and keys[1].split("#")[0] == keys[2].split("#")[0]
    assert enqueue_keys((a,)) == [keys[1]]


def test_new_keys_are_study_settings_not_fixed_values() -> None:
    """sampler, pruner, enqueue and directions are not passed to the training function."""
    cfg = check(sampler="random", pruner="median", enqueue=[{"x": 0.5}])
    assert not {"sampler", "pruner", "enqueue", "directions"} & set(cfg.fixed)


# --- report() outside a search ------------------------------------------------------------------


def test_report_and_trial_number_outside_a_search_are_harmless(caplog: pytest.LogCaptureFixture) -> None:
    """Outside a search (retraining the best config): report() does nothing, the trial number
    is None, one debug line each (issue 12)."""
    import logging

    from hparam_joblib import _report

    _report._SAID.clear()
    with caplog.at_level(logging.DEBUG, logger="hparam_joblib"):
        for epoch in range(3):
            assert report(0.5, epoch) is None
            assert current_trial_number() is None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "report() called outside a search: ignored",
        "current_trial_number() called outside a search: ignored",
    ]


def test_param_spec_defaults_unchanged() -> None:
    """ParamSpec without a condition compares equal to the pre-condition form."""
    assert ParamSpec(name="p", type="int", low=1, high=2) == ParamSpec(name="p", type="int", low=1, high=2, when=())
