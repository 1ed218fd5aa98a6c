"""Request bodies parsed as strictly as TGI's serde_json does, where Python's ``json`` is laxer in ways that
break later code: nesting deeper than serde's recursion limit (128; Python's parser raises RecursionError near
1,000, and deep values can exhaust the stack of later recursive code) and lone UTF-16 surrogates in ``\\u``
escapes (valid for Python, but they cannot be encoded as UTF-8: tokenizers raise TypeError, echoing them in an
error message raises UnicodeEncodeError). Both are refused as malformed JSON, with serde's words.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 128  # serde_json's recursion limit
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class JsonBodyError(ValueError):
    """The body is not JSON serde would accept; ``str()`` is the parser's message with its position."""


def loads(body: bytes) -> Any:
    """Parse ``body`` like serde_json. Raises JsonBodyError or ValueError (json.JSONDecodeError, bad UTF-8,
    NaN/Infinity)."""
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        _check_depth(body)
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except RecursionError as exc:  # NOTE: unreachable after _check_depth; kept as a guard
        raise JsonBodyError("recursion limit exceeded") from exc
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(value):
        raise JsonBodyError("lone leading surrogate in hex escape")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"invalid number `{name}`")


def _check_depth(body: bytes) -> None:
    depth = 0
    for match in _TOKENS.finditer(body):
        char = match.group()
        if char in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                line = body.count(b"\n", 0, match.start()) + 1
                column = match.start() - (body.rfind(b"\n", 0, match.start()) + 1) + 1
                raise JsonBodyError(f"recursion limit exceeded at line {line} column {column}")
        elif char in (b"]", b"}"):
            depth -= 1


def _has_lone_surrogate(value: Any) -> bool:
    """Any string (key or value) that UTF-8 cannot encode; iterative, so depth never matters."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not _utf8_ok(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
