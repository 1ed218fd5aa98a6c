from __future__ import annotations

import pytest

from bench.cost_model import ANALYTIC_NAMES, MeasuredCost, load_measured, make_cost_model


@pytest.mark.parametrize("name", ANALYTIC_NAMES)
def test_step_time_grows_with_new_tokens_context_and_batch(name: str) -> None:
    c = make_cost_model(name)
    assert c.step_seconds([], []) == 0.0
    assert c.step_seconds([(512, 0)], []) < c.step_seconds([(1024, 0)], []) < c.step_seconds([(4096, 0)], [])
    assert c.step_seconds([(1024, 0)], []) < c.step_seconds([(1024, 8192)], [])
    assert c.step_seconds([], [1000] * 8) < c.step_seconds([], [1000] * 64) < c.step_seconds([], [8000] * 64)


def test_magnitudes_are_sane() -> None:
    a800_4b = make_cost_model("qwen3-4b-a800")
    prefill_1k = a800_4b.step_seconds([(1024, 0)], [])
    assert 0.01 < prefill_1k < 0.1  # tens of ms
    decode_one = a800_4b.step_seconds([], [1000])
    assert 0.003 < decode_one < 0.02  # weights streamed once per step: a few ms
    assert make_cost_model("llama2-13b-a800").step_seconds([(1024, 0)], []) > 2 * prefill_1k
    assert make_cost_model("qwen3-4b-h100").step_seconds([(1024, 0)], []) < prefill_1k


def test_kv_capacity_follows_model_and_memory() -> None:
    cap_4b = make_cost_model("qwen3-4b-a800").kv_capacity_tokens
    cap_13b = make_cost_model("llama2-13b-a800").kv_capacity_tokens
    # Qwen3-4B: 144 KiB/token (GQA 8 heads), ~64 GB free -> ~430k
    # Llama-2-13B: 800 KiB/token (MHA), ~46 GB free -> ~56k
    assert 300_000 < cap_4b < 600_000
    assert 30_000 < cap_13b < 80_000


def test_measured_roundtrip_and_linear_form(tmp_path) -> None:
    m = MeasuredCost("measured", 0.01, 1e-4, 1e-8, 1e-4, 1e-7, kv_capacity_tokens=10_000)
    m.save(tmp_path / "c.json")
    loaded = make_cost_model(f"measured:{tmp_path / 'c.json'}")
    assert loaded == load_measured(tmp_path / "c.json") == m
    assert loaded.step_seconds([(100, 0)], []) == pytest.approx(0.01 + 1e-2 + 1e-8 * 100 * 50.5)
    assert loaded.step_seconds([], [1000, 1000]) == pytest.approx(0.01 + 2e-4 + 2e-4)


def test_unknown_name_is_rejected() -> None:
    with pytest.raises(ValueError):
        make_cost_model("gpt-9-tpu")
