"""``tracking: {mlflow: {...}}``: validated like every other key; not passed to the function."""

from __future__ import annotations

from typing import Any

import pytest

from hparam_joblib._errors import ConfigError
from hparam_joblib.config._schema import MlflowSpec
from tests.unit.test_config import base, check


def test_mlflow_spec_accepted_and_not_passed_to_the_function() -> None:
    cfg = check(base(tracking={"mlflow": {"tracking_uri": " http://127.0.0.1:5000 ", "experiment_name": "sweeps"}}))
    assert cfg.mlflow == MlflowSpec("http://127.0.0.1:5000", "sweeps")
    assert "tracking" not in cfg.fixed
    assert check(base(tracking={"mlflow": {"tracking_uri": "sqlite:///m.db"}})).mlflow == MlflowSpec("sqlite:///m.db", "")
    assert check(base()).mlflow is None
    assert check(base(tracking=None)).mlflow is None


@pytest.mark.parametrize(
    ("tracking", "key", "message"),
    [
        ("mlflow", "tracking", "must be a mapping with the key mlflow"),
        ({"wandb": {}}, "tracking", "must be a mapping with the key mlflow"),
        ({"mlflow": "http://x"}, "tracking.mlflow", "must be a mapping (tracking_uri, experiment_name)"),
        ({"mlflow": {}}, "tracking.mlflow.tracking_uri", "is required: a tracking server URL"),
        ({"mlflow": {"tracking_uri": "mlflow.db"}}, "tracking.mlflow.tracking_uri", "must be a URL such as"),
        ({"mlflow": {"tracking_uri": "http://x", "tracking_url": 1}}, "tracking.mlflow.tracking_url", "unknown key"),
        ({"mlflow": {"tracking_uri": "http://x", "experiment_name": 3}}, "tracking.mlflow.experiment_name",
         "must be a string"),
    ],
)
def test_mlflow_spec_rejected(tracking: Any, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check(base(tracking=tracking))
    assert info.value.key == key, str(info.value)
    assert message in str(info.value)
