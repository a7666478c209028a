"""What travels beside the weights: the result meta's bounds, and extras."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.errors import ConfigError
from shoal.taskmeta import (
    EXTRAS_PREFIX,
    MAX_RESULT_META_KEYS,
    check_params_type,
    check_result_meta,
    join_extras,
    split_extras,
)


def test_scalars_pass() -> None:
    meta = {"a": 1, "b": 2.5, "c": "x", "d": True, "e": None}
    assert check_result_meta(meta) == meta
    assert check_result_meta(None) == {}


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"a": [1]}, r"FLModel.meta\['a'\]: list is not a JSON scalar"),
        ({"a": {"b": 1}}, "dict is not a JSON scalar"),
        ({"a": float("nan")}, "not a finite number"),
        ({"a": 2**64}, "64-bit"),
        ({"": 1}, "key '' must be a string"),
        ({1: 1}, "must be a string"),
        ({"a": "x" * 70_000}, "more than the limit of 65536"),
        ({f"k{i}": i for i in range(MAX_RESULT_META_KEYS + 1)}, "keys, more than"),
        ([1], "must be a mapping"),
    ],
)
def test_what_the_server_cannot_check_is_refused(meta: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_result_meta(meta)


def test_params_type() -> None:
    assert check_params_type("diff") == "diff"
    with pytest.raises(ConfigError, match="'full' or 'diff'"):
        check_params_type("delta")


def test_extras_ride_beside_the_weights() -> None:
    w, c = np.ones(2), np.zeros(3)
    joined = join_extras({"w": w}, {"w": c})
    assert set(joined) == {"w", EXTRAS_PREFIX + "w"}
    params, extras = split_extras(joined)
    assert params["w"] is w and extras["w"] is c
    assert join_extras({"w": w}, {}) == {"w": w}
    with pytest.raises(ConfigError, match="reserved"):
        join_extras({EXTRAS_PREFIX + "x": w}, {"y": c})
