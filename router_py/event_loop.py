"""The router's event loop and HTTP parser: uvloop's loop (libuv) and httptools' parser where they are installed
(both are dependencies on Linux and macOS, as in ``uvicorn[standard]``), else asyncio's loop and h11; why,
measured, in docs/performance.md. ``PRISM_UVLOOP=0`` keeps asyncio's loop."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

from router_py import env

T = TypeVar("T")


def uses_uvloop() -> bool:
    """uvloop is installed and not switched off."""
    return env.uvloop_wanted() and importlib.util.find_spec("uvloop") is not None


def http_parser() -> str:
    """uvicorn's ``http`` for the router: httptools when installed, else h11 (uvicorn's own choice too)."""
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop's loop when :func:`uses_uvloop`, else on asyncio's."""
    if not uses_uvloop():
        return asyncio.run(main)
    import uvloop

    return uvloop.run(main)


def describe() -> str:
    """For the start-up log line."""
    loop = "uvloop" if uses_uvloop() else "asyncio"
    return f"event loop {loop} (PRISM_UVLOOP=0: asyncio), HTTP parser {http_parser()}"
