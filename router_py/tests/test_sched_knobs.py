"""Typed scheduler and policy knobs: parsed from flat --scheduler-param keys against their fields."""

from __future__ import annotations

import pytest

from prism_cache import PolicyConfig
from prism_cache.params import parse_knobs
from router_py.scheduling.interface import SchedulerConfig
from router_py.scheduling.qas import QasParams
from router_py.scheduling.registry import PARAMS, make_scheduler


def test_every_knob_key_is_a_field_of_one_class() -> None:
    assert PARAMS == {
        "qas_window", "qas_max_bypass", "qas_max_wait_s", "qas_wait_factor", "qas_dedup", "qas_pioneer_weight",
        "lpm_fcfs_threshold", "inbatch_check_threshold", "inbatch_deprioritize_threshold", "lookahead_window",
        "hotprefix_max_age", "hotprefix_decay_period", "dart_heat_half_life", "dart_popularity_weight",
        "dart_session_weight", "dart_length_penalty",
    }


def test_values_take_the_field_type_and_defaults_stay() -> None:
    p = parse_knobs(QasParams, {"qas_window": 8.0, "qas_dedup": 0.0, "lpm_fcfs_threshold": 3.0})
    assert p == QasParams(window=8, dedup=False)
    assert isinstance(p.window, int) and p.max_wait_s == QasParams.max_wait_s


def test_bad_knobs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown scheduler params"):
        make_scheduler(SchedulerConfig("qas", "dart", num_blocks=64, params={"qas_windw": 4.0}))
    with pytest.raises(ValueError, match="qas_window must be >= 1"):
        make_scheduler(SchedulerConfig("qas", "dart", num_blocks=64, params={"qas_window": 0.0}))
    with pytest.raises(ValueError, match="unknown cache policy"):
        PolicyConfig.parse("mru")


def test_the_registry_says_what_a_policy_needs() -> None:
    assert PolicyConfig.parse("dart").uses_popularity
    assert not PolicyConfig.parse("dart", {"dart_popularity_weight": 0.0}).uses_popularity
    assert PolicyConfig.parse("lookahead-lru").uses_lookahead and not PolicyConfig.parse("lru").uses_lookahead
