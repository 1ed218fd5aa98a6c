"""What every route handler shares: the application state, JSON body extraction with axum's rejections, the
API key check and request-level metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from router_py.http import json_body
from router_py.router_config import RouterConfig
from router_py.http.errors import (
    FrameworkError,
    HttpError,
    malformed_json,
    payload_too_large,
    unauthorized,
    unsupported_media_type,
    validation_error,
)
from router_py.http.generation_runner import FinishedSequence, Permits, Timings
from router_py.backend_api import Backend
from router_py.metrics import Metrics
from router_py.tenancy import CacheSaltError, cache_salt, salted
from router_py.tokenizer import Tokenizer
from router_py.http.validation import Validator, tenant_namespace

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class AppState:
    backend: Backend
    tokenizer: Tokenizer
    config: RouterConfig
    metrics: Metrics
    validator: Validator
    permits: Permits

    def record_failure(self, err: HttpError) -> None:
        self.metrics.inc("tgi_request_failure", err=err.metric_label)

    def record_success(self, gen: FinishedSequence, timings: Timings) -> None:
        """TGI's per-request success metrics (durations in seconds)."""
        m = self.metrics
        m.observe("tgi_request_duration", timings.total)
        m.observe("tgi_request_validation_duration", timings.validation)
        m.observe("tgi_request_queue_duration", timings.queue)
        m.observe("tgi_request_inference_duration", timings.inference)
        m.observe("tgi_request_mean_time_per_token_duration", timings.per_token)
        m.observe("tgi_request_generated_tokens", gen.end.generated_tokens)
        m.inc("tgi_request_success")

    def record_validated(self, input_length: int, max_new_tokens: int) -> None:
        self.metrics.observe("tgi_request_input_length", input_length)
        self.metrics.observe("tgi_request_max_new_tokens", min(max_new_tokens, 1024))


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.prism
    return state


def now() -> float:
    return time.monotonic()


def _is_json(content_type: str) -> bool:
    mime = content_type.split(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


_PARSED_KEY = "prism.json_body"


async def read_json(request: Request) -> Any:
    """The parsed JSON body (parsed once per request, so /invocations can dispatch it). Raises FrameworkError:
    415 without a JSON content type, 413 past the payload limit, 400 for malformed JSON (axum's order)."""
    if _PARSED_KEY in request.scope:
        return request.scope[_PARSED_KEY]
    request.scope[_PARSED_KEY] = await _parse_body(request)
    return request.scope[_PARSED_KEY]


async def _parse_body(request: Request) -> Any:
    if not _is_json(request.headers.get("content-type", "")):
        raise unsupported_media_type()
    limit = state_of(request).config.payload_limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise payload_too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise payload_too_large()
    try:
        return json_body.loads(bytes(body))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity, depth, lone surrogates
        raise malformed_json(_json_error_text(exc)) from exc


def _json_error_text(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)


def authorized(config: RouterConfig, request: Request) -> bool:
    """TGI's check: ``Authorization`` equals ``Bearer <key>``, compared case-insensitively; with a keys file
    (:mod:`router_py.tenancy`) any of its keys (exactly) passes too. No key configured: everyone passes."""
    presented = request.headers.get("authorization", "")
    tenants = config.tenants
    if tenants is not None and tenants.by_key and tenants.tenant_of_key(presented) is not None:
        return True
    if config.api_key is None:
        return tenants is None or not tenants.by_key
    return presented.lower() == f"bearer {config.api_key}".lower()


SESSION_HEADER = "x-session-id"
MAX_SESSION_LEN = 256


async def request_session(request: Request) -> str | None:
    """The conversation or user a request names, for DART's session return (prism_cache.session_return): the
    ``x-session-id`` header, else the body's OpenAI ``user`` field; None when neither (the cache then follows
    the prompt chain). Only ranks cache retention, so it is never validated, only cut to 256 characters."""
    named = request.headers.get(SESSION_HEADER)
    if not named:
        body = await read_json(request)
        named = body.get("user") if isinstance(body, dict) else None
    return named[:MAX_SESSION_LEN] if isinstance(named, str) and named else None


async def request_namespace(request: Request) -> str:
    """The request's cache namespace: its tenant's, salted by its ``cache_salt`` (HttpError 422 when the salt
    is invalid)."""
    config = state_of(request).config
    body = await read_json(request)
    try:
        salt = cache_salt(body)
    except CacheSaltError as e:
        raise validation_error(str(e)) from e
    return salted(tenant_namespace(config, request.headers), salt)


def protected(handler: Handler) -> Handler:
    """Wrap a handler: 401 (empty) on a bad key; framework and handler errors rendered as responses."""

    async def wrapped(request: Request) -> Response:
        if not authorized(state_of(request).config, request):
            return unauthorized().response()
        return await handled(handler)(request)

    return wrapped


def handled(handler: Handler) -> Handler:
    """Render FrameworkError/HttpError raised by ``handler`` (HttpError also counts a failure)."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except FrameworkError as err:
            return err.response()
        except HttpError as err:
            state_of(request).record_failure(err)
            return err.response()

    return wrapped
