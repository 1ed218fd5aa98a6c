"""Unauthenticated GET routes: health (``/``, ``/health``, ``/ping``), ``/info`` and ``/metrics``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from router_py.router_config import ROUTER_NAME, VERSION, RouterConfig
from router_py.http.routes_common import state_of


async def health_route(request: Request) -> Response:
    """200 with an empty body, or 503 ``healthcheck`` (the backend runs TGI's probe state machine)."""
    if await state_of(request).backend.health():
        return Response(status_code=200)
    return JSONResponse({"error": "unhealthy", "error_type": "healthcheck"}, status_code=503)


def info_body(config: RouterConfig) -> dict[str, Any]:
    return {
        "model_id": config.model_id,
        "model_sha": config.model_sha,
        "model_pipeline_tag": config.model_pipeline_tag,
        "max_concurrent_requests": config.max_concurrent_requests,
        "max_best_of": config.max_best_of,
        "max_stop_sequences": config.max_stop_sequences,
        "max_input_tokens": config.max_input_tokens,
        "max_total_tokens": config.max_total_tokens,
        "validation_workers": config.validation_workers,
        "max_client_batch_size": config.max_client_batch_size,
        "router": ROUTER_NAME,
        "version": VERSION,
        "sha": config.sha,
        "docker_label": config.docker_label,
    }


async def info_route(request: Request) -> Response:
    state = state_of(request)
    body = info_body(state.config)
    # NOTE: older TGI's fields, kept so an operator can see the dtype/device the shard chose (bf16 by default
    # on bf16-native CPUs); clients that read current TGI's /info ignore them.
    body["model_dtype"] = state.backend.info.dtype
    body["model_device_type"] = state.backend.info.device_type
    return JSONResponse(body)


async def metrics_route(request: Request) -> Response:
    return PlainTextResponse(state_of(request).metrics.render(), media_type="text/plain; version=0.0.4")
