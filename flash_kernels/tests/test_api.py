"""Backend registry: names, error messages, and the order in which ``auto`` tries backends."""

from __future__ import annotations

import pytest

from flash_kernels import api


def test_named_backends_load_and_report_their_name() -> None:
    for name in ("reference", "sdpa", "triton"):
        assert api.get_backend(name).name == name


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        api.get_backend("nope")


def test_auto_on_cpu_is_sdpa() -> None:
    assert api.get_backend("auto", device="cpu", block_size=16).name == "sdpa"


@pytest.mark.parametrize(
    ("block_size", "expected_order"),
    [
        (256, ["flash-attn", "triton"]),
        (512, ["flash-attn", "triton"]),
        (None, ["flash-attn", "triton"]),
        (16, ["triton", "flash-attn"]),
        (1, ["triton", "flash-attn"]),
    ],
)
def test_auto_on_cuda_prefers_paged_flash_attn_only_where_it_reads_the_pool(
    monkeypatch: pytest.MonkeyPatch, block_size: int | None, expected_order: list[str]
) -> None:
    tried: list[str] = []

    def fake_load(name: str) -> object:
        tried.append(name)
        if name != "reference":
            raise ImportError(name)
        return object()

    monkeypatch.setattr(api, "_load", fake_load)
    api.get_backend("auto", device="cuda:0", block_size=block_size)
    assert tried == [*expected_order, "reference"]
