"""The router's HTTP application: TGI's routes (tgi-compat 3.1) wired onto a :class:`Backend`.

``create_app`` is the only entry point; handlers live in ``routes_*`` modules. POST routes that TGI guards
with ``--api-key`` are wrapped by :func:`protected`; the others only render their errors.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from router_py.router_config import RouterConfig
from router_py.http.errors import deserialize_error
from router_py.http.http_guard import HttpGuard
from router_py.http.generation_runner import Permits
from router_py.backend_api import Backend
from router_py.metrics import Metrics
from router_py.http.openapi import SWAGGER_ASSETS, SWAGGER_PAGE, openapi_document, swagger_assets_dir
from router_py.http.routes_common import AppState, handled, protected, read_json
from router_py.http.routes_generate import (
    compat_generate,
    generate_route,
    generate_stream_route,
    tokenize_route,
    vertex_route,
)
from router_py.http.routes_info import health_route, info_route, metrics_route
from router_py.http.routes_openai import (
    chat_completions_route,
    chat_tokenize_route,
    completions_route,
    models_route,
)
from router_py.tokenizer import Tokenizer
from router_py.http.validation import Validator
from router_py.http.sse import RAW_SEND


class _App(Starlette):
    """Starlette, with the server's own ``send`` in the scope: a streamed response's chunks between its start
    and its end skip the middlewares, which act only on those two (``sse.EventStreamResponse``; a middleware
    that needs every chunk must not be added without dropping that)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


async def invocations_route(request: Request) -> Response:
    """SageMaker: an untagged union tried in TGI's order (compat generate, chat, completions)."""
    body = await read_json(request)
    if isinstance(body, dict) and "inputs" in body:
        return await compat_generate(request)
    if isinstance(body, dict) and "messages" in body:
        return await chat_completions_route(request)
    if isinstance(body, dict) and "prompt" in body:
        return await completions_route(request)
    raise deserialize_error("data did not match any variant of untagged enum SagemakerRequest")


async def openapi_route(request: Request) -> Response:
    return JSONResponse(openapi_document())


async def docs_route(request: Request) -> Response:
    return HTMLResponse(SWAGGER_PAGE)


async def root_route(request: Request) -> Response:
    """``GET /`` is the health check, ``POST /`` TGI's compat generate: one route, so a 405 on ``/`` lists
    both methods in ``Allow``."""
    if request.method == "POST":
        return await _compat_generate(request)
    return await health_route(request)


_compat_generate = protected(compat_generate)


def _routes() -> list[Route | Mount]:
    post = ["POST"]
    return [
        Route("/", root_route, methods=["GET", "POST"]),
        Route("/generate", protected(generate_route), methods=post),
        Route("/generate_stream", protected(generate_stream_route), methods=post),
        Route("/v1/chat/completions", protected(chat_completions_route), methods=post),
        Route("/v1/completions", protected(completions_route), methods=post),
        Route("/invocations", protected(invocations_route), methods=post),
        Route("/vertex", protected(vertex_route), methods=post),
        Route("/tokenize", protected(tokenize_route), methods=post),
        Route("/chat_tokenize", handled(chat_tokenize_route), methods=post),
        Route("/health", health_route, methods=["GET"]),
        Route("/ping", health_route, methods=["GET"]),
        Route("/info", info_route, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/v1/models", models_route, methods=["GET"]),
        Route("/api-doc/openapi.json", openapi_route, methods=["GET"]),
        Route("/docs", docs_route, methods=["GET"]),
        Mount(SWAGGER_ASSETS, StaticFiles(directory=swagger_assets_dir()), name="swagger-ui"),
    ]


def create_app(backend: Backend, tokenizer: Tokenizer, config: RouterConfig, metrics: Metrics) -> Starlette:
    """The ASGI app. ``config`` carries the limits settled at Warmup (max_input_tokens/max_total_tokens)."""
    cors = Middleware(
        CORSMiddleware,
        allow_origins=list(config.cors_allow_origin) or ["*"],
        allow_methods=["GET", "POST"],
        allow_headers=["content-type"],
    )
    app = _App(routes=_routes(), middleware=[Middleware(HttpGuard), cors])
    app.state.prism = AppState(
        backend=backend,
        tokenizer=tokenizer,
        config=config,
        metrics=metrics,
        validator=Validator(tokenizer, config),
        permits=Permits(config.max_concurrent_requests),
    )
    return app
