"""Unit tests for ``--set`` parsing and application (hparam_joblib.config._overrides)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from hparam_joblib._errors import ConfigError, OverrideError
from hparam_joblib.config._overrides import Override, apply_overrides, parse_override


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("n_trials=200", ("n_trials",), 200),
        ("model.first_layer.bias=False", ("model", "first_layer", "bias"), False),
        ("flag=True", ("flag",), True),
        ("flag=false", ("flag",), False),
        ("x=null", ("x",), None),
        ("x=~", ("x",), None),
        ("x=", ("x",), None),
        ("x=   ", ("x",), None),
        ("lr=1e-3", ("lr",), 0.001),
        ("lr=5.0e-5", ("lr",), 5.0e-5),
        ("lr=1E+5", ("lr",), 100000.0),
        ("lr=-1e-3", ("lr",), -0.001),
        ("lr=-.5", ("lr",), -0.5),
        ("ratio=0.25", ("ratio",), 0.25),
        ("layers=[1, 2]", ("layers",), [1, 2]),
        ("opt={a: 1}", ("opt",), {"a": 1}),
        ("opt={name: adam, betas: [0.9, 0.99]}", ("opt",), {"name": "adam", "betas": [0.9, 0.99]}),
        ("tag=second_sweep", ("tag",), "second_sweep"),
        ("tag='123'", ("tag",), "123"),
        ('tag="1e-3"', ("tag",), "1e-3"),
        ("name=hello world", ("name",), "hello world"),
        ("expr=a=b", ("expr",), "a=b"),
        ("  spaced  =7", ("spaced",), 7),
        ("a.b.c.d=x", ("a", "b", "c", "d"), "x"),
    ],
)
def test_parse_override_value_is_yaml(text: str, path: tuple[str, ...], value: Any) -> None:
    """The key splits on '.', the value is read as YAML with YAML 1.2 floats."""
    item = parse_override(text)
    assert item == Override(text=text, path=path, value=value)
    assert type(item.value) is type(value)
    assert item.key == ".".join(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n_trials", r"expected key=value"),
        ("", r"expected key=value"),
        ("=5", r"the key before '=' is empty"),
        ("   =5", r"the key before '=' is empty"),
        ("a..b=1", r"key 'a\.\.b' has an empty part"),
        (".a=1", r"key '\.a' has an empty part"),
        ("a.=1", r"key 'a\.' has an empty part"),
        ("x=[1, 2", r"value is not valid YAML"),
        ("x={a: 1", r"value is not valid YAML"),
        ("x=!!python/object/apply:os.system ['echo hi']", r"value is not valid YAML"),
    ],
)
def test_parse_override_rejects_bad_items(text: str, message: str) -> None:
    """A malformed item is an OverrideError carrying the raw text."""
    assert rejected(text, message).text == text


def rejected(text: str, message: str) -> OverrideError:
    """The OverrideError ``parse_override(text)`` raises: it matches ``message`` and names the item."""
    with pytest.raises(OverrideError, match=message) as info:
        parse_override(text)
    assert str(info.value).startswith(f"--set {text!r}: ")
    return info.value
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize(
    ("raw", "items", "expected", "created"),
    [
        ({"n_trials": 10}, ["n_trials=200"], {"n_trials": 200}, []),
        ({"n_jobs": 8, "tag": "a"}, ["n_jobs=16", "tag=second_sweep"], {"n_jobs": 16, "tag": "second_sweep"}, []),
        ({}, ["model.first_layer.bias=False"], {"model": {"first_layer": {"bias": False}}}, ["model.first_layer.bias"]),
        (
            {"model": {"first_layer": {"bias": True, "width": 4}}},
            ["model.first_layer.bias=False"],
            {"model": {"first_layer": {"bias": False, "width": 4}}},
            [],
        ),
        ({"model": {"depth": 3}}, ["model.width=64"], {"model": {"depth": 3, "width": 64}}, ["model.width"]),
        ({"a": 1}, ["b=2"], {"a": 1, "b": 2}, ["b"]),
        ({}, ["a.b=1", "a.c=2"], {"a": {"b": 1, "c": 2}}, ["a.b", "a.c"]),
        ({"a": 1}, ["a=2", "a=3"], {"a": 3}, []),
        ({"a": {"b": 1}}, ["a=5"], {"a": 5}, []),
        ({"a": 1}, ["a={b: 2}", "a.c=3"], {"a": {"b": 2, "c": 3}}, ["a.c"]),
        (
            {"sweep_parameters": {"lr": {"type": "float", "low": 0.1, "high": 1.0}}},
            ["sweep_parameters.lr.low=1e-4"],
            {"sweep_parameters": {"lr": {"type": "float", "low": 0.0001, "high": 1.0}}},
            [],
        ),
        ({"layers": {0: 16, 1: 32}}, ["layers.0=64"], {"layers": {0: 64, 1: 32}}, []),
        ({"x": None}, ["x=1"], {"x": 1}, []),
        ({}, [], {}, []),
    ],
)
def test_apply_overrides(
    raw: dict[str, Any], items: list[str], expected: dict[str, Any], created: list[str]
) -> None:
    """Overrides set nested values, create missing mappings and report the keys they created."""
    result, new_keys = apply_overrides(raw, [parse_override(t) for t in items])
    assert result == expected
    assert new_keys == created


@pytest.mark.parametrize(
    ("raw", "text", "message"),
    [
        ({"a": 1}, "a.b=2", r"a is a int \(1\), not a mapping, so a\.b cannot be set inside it"),
        ({"a": "text"}, "a.b.c=2", r"a is a str \('text'\), not a mapping, so a\.b\.c cannot"),
        ({"a": [1, 2]}, "a.0=5", r"a is a list \(\[1, 2\]\), not a mapping"),
        ({"a": {"b": 3}}, "a.b.c=2", r"a\.b is a int \(3\), not a mapping, so a\.b\.c cannot"),
        ({"a": None}, "a.b=2", r"a is null, not a mapping"),
        ({"hidden_layers": 8}, "hidden_layers.width=2", r"hidden_layers is a int \(8\)"),
    ],
)
def test_apply_overrides_through_non_mapping(raw: dict[str, Any], text: str, message: str) -> None:
    """Walking through a value that is not a mapping is an OverrideError naming the item."""
    before = copy.deepcopy(raw)
    with pytest.raises(OverrideError, match=message) as info:
        apply_overrides(raw, [parse_override(text)])
    assert info.value.text == text
    assert str(info.value).startswith(f"--set {text!r}: ")
    assert raw == before


def test_apply_overrides_leaves_input_unchanged() -> None:
    """The input mapping, its nested mappings and the override values are never mutated or shared."""
    raw: dict[str, Any] = {"model": {"first_layer": {"bias": True}}, "n_trials": 10, "lst": [1]}
    before = copy.deepcopy(raw)
    items = [parse_override(t) for t in ("model.first_layer.bias=False", "model.new=1", "n_trials=5", "v=[1]")]
    result, _ = apply_overrides(raw, items)
    assert raw == before
    assert result["model"] is not raw["model"]
    assert result["lst"] is not raw["lst"]
    result["v"].append(2)
    assert items[3].value == [1]


def test_apply_overrides_later_item_wins_and_created_listed_once_per_item() -> None:
    """Items apply left to right; a key created by the first item is not new for the second."""
    items = [parse_override(t) for t in ("a.b=1", "a.b=2")]
    result, created = apply_overrides({}, items)
    assert result == {"a": {"b": 2}}
    assert created == ["a.b"]


def test_override_error_message_is_one_line_with_raw_text() -> None:
    """The message quotes the raw item the user typed."""
    with pytest.raises(OverrideError) as info:
        parse_override("n_trials200")
    assert re.fullmatch(r"--set 'n_trials200': expected key=value \(e\.g\. --set n_trials=200\)", str(info.value))
