"""HTTP errors with TGI's statuses, ``error_type`` values and texts (tgi-compat 3.5).

Handler errors are JSON ``{"error": str, "error_type": str}``; framework-level errors (content type, malformed
JSON, deserialization, body size) are ``text/plain`` as axum writes them; a bad API key is 401 with an empty
body.
"""

from __future__ import annotations

from starlette.responses import JSONResponse, PlainTextResponse, Response

from router_py.backend_api import InferError


class HttpError(Exception):
    """A handler error rendered as TGI's JSON error body."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    @property
    def metric_label(self) -> str:
        """The ``err`` label of ``tgi_request_failure`` (a fixed set in TGI)."""
        return _METRIC_LABELS.get(self.error_type, self.error_type)

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}

    def response(self) -> Response:
        return JSONResponse(self.body(), status_code=self.status)


class FrameworkError(Exception):
    """A request rejected before it reaches a handler (axum extractor rejections): plain text, no JSON."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text

    def response(self) -> Response:
        if not self.text:
            return Response(status_code=self.status)
        return PlainTextResponse(self.text, status_code=self.status)


_METRIC_LABELS = {
    "validation": "validation",
    "overloaded": "overloaded",
    "generation": "generation",
    "incomplete_generation": "incomplete",
    "incomplete_generation_stream": "incomplete",
    "template_error": "template",
    "missing_template_variable": "template",
    # TGI's completions route counts its own two 422s (suffix, prompt count) as validation failures
    "suffix not supported": "validation",
    "batch size exceeded": "validation",
}


def validation_error(message: str) -> HttpError:
    return HttpError(422, "validation", f"Input validation error: {message}")


def overloaded() -> HttpError:
    return HttpError(429, "overloaded", "Model is overloaded")


def template_error(message: str) -> HttpError:
    return HttpError(422, "template_error", f"Template error: {message}")


def incomplete_generation(stream: bool = False) -> HttpError:
    if stream:
        return HttpError(500, "incomplete_generation_stream", "Incomplete generation stream")
    return HttpError(500, "incomplete_generation", "Incomplete generation")


def from_infer_error(err: InferError) -> HttpError:
    """Map a backend failure to TGI's status and text. For ``generation`` the backend's message is the shard's
    error as TGI's client renders it (e.g. ``Server error: CUDA out of memory``)."""
    if err.error_type == "generation":
        return HttpError(424, "generation", f"Request failed during generation: {err.message}")
    if err.error_type == "overloaded":
        return overloaded()
    if err.error_type == "validation":
        return validation_error(err.message)
    if err.error_type.startswith("incomplete_generation"):
        return incomplete_generation(err.error_type.endswith("_stream"))
    return HttpError(500, err.error_type, err.message)


def deserialize_error(detail: str) -> FrameworkError:
    return FrameworkError(422, f"Failed to deserialize the JSON body into the target type: {detail}")


def unauthorized() -> FrameworkError:
    return FrameworkError(401, "")


def unsupported_media_type() -> FrameworkError:
    return FrameworkError(415, "Expected request with `Content-Type: application/json`")


def malformed_json(detail: str) -> FrameworkError:
    return FrameworkError(400, f"Failed to parse the request body as JSON: {detail}")


def payload_too_large() -> FrameworkError:
    return FrameworkError(413, "Failed to buffer the request body: length limit exceeded")
