"""ValidatorConfig: sensible defaults and clear errors for bad keys and values."""

from __future__ import annotations

import pytest

from matl.errors import ConfigError
from matl.validator.config import load_validator_config


def test_unknown_keys_name_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown validator key\(s\) rond_size; valid: .*round_size"
    ):
        load_validator_config({"dim": 4, "rond_size": 3})


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({}, "dataset .* or dim"),
        ({"dim": 4, "mode": 1}, "mode 1 .* needs a dataset"),
        ({"dim": 4, "mode": 2}, "mode"),
        ({"dim": 4, "round_size": 2, "min_round_size": 3}, "min_round_size"),
        ({"dim": 4, "trust": {"mode": 1}}, "not inside `trust`"),
        ({"dim": 0}, "dim"),
    ],
)
def test_bad_values_are_refused(raw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_validator_config(raw)


def test_defaults() -> None:
    cfg = load_validator_config({"dim": 10})
    assert cfg.mode == 0 and cfg.round_size == 10 and cfg.registration == "open"
