"""The router runs on uvloop's loop (a dependency on Linux, where these run), asyncio's when switched off, and
uvicorn parses HTTP with httptools."""

from __future__ import annotations

import asyncio

import pytest

from router_py import event_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_router_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRISM_UVLOOP", raising=False)
    assert event_loop.uses_uvloop()
    assert event_loop.run(_loop_module()).startswith("uvloop")
    assert event_loop.describe().startswith("event loop uvloop")


def test_prism_uvloop_0_keeps_asyncio_s_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRISM_UVLOOP", "0")
    assert not event_loop.uses_uvloop()
    assert event_loop.run(_loop_module()).startswith("asyncio")
    assert event_loop.describe().startswith("event loop asyncio")


def test_uvicorn_gets_the_httptools_parser() -> None:
    assert event_loop.http_parser() == "httptools"
