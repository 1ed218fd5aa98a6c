"""The OpenAPI document served at ``/api-doc/openapi.json`` (TGI's schema and operation names) and the Swagger
UI page at ``/docs``. Hand-written: the routes are few and the names are the contract."""

from __future__ import annotations

from typing import Any

from router_py.router_config import VERSION


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    """OpenAPI 3.0 spells an optional value ``nullable: true`` (3.1's ``type: [kind, "null"]`` is invalid)."""
    return {"type": kind, "nullable": True, **extra}


def _nullable_ref(name: str) -> dict[str, Any]:
    """A nullable reference (3.0: a ``$ref`` takes no siblings, so it is wrapped in ``allOf``)."""
    return {"allOf": [_ref(name)], "nullable": True}


def _positive(kind: str, **extra: Any) -> dict[str, Any]:
    """Strictly positive: 3.0's ``exclusiveMinimum`` is a boolean qualifying ``minimum``."""
    return _nullable(kind, minimum=0, exclusiveMinimum=True, **extra)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json(_ref("ErrorResponse"))}


# vLLM's sampling fields, served on both OpenAI routes (router_py.http.openai_sampling)
# OpenAI's `stop`: one string or a list; cut before the first one found anywhere in the text (router_py.http.openai_stop)
# NOTE: continuous_usage_stats is vLLM's: with include_usage, every chunk carries the running usage
_STREAM_OPTIONS = _nullable(
    "object",
    properties={"include_usage": {"type": "boolean"}, "continuous_usage_stats": {"type": "boolean"}},
)
_OPENAI_STOP = {"nullable": True, "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_TOKENS_AS_IDS = _nullable("boolean", description="vLLM's: logprobs name each token token_id:N")
# NOTE: vLLM's output fields (router_py.http.special_text, router_py.http.prompt_logprobs)
_VLLM_OUTPUT = {
    "skip_special_tokens": _nullable("boolean", description="vLLM's: false keeps special tokens' text"),
    "prompt_logprobs": _nullable(
        "integer", minimum=0, maximum=5, description="vLLM's: each prompt token's logprob and rank, and its "
        "position's likeliest tokens' (not when streaming)",
    ),
}
_VLLM_SAMPLING = {
    "min_tokens": _nullable("integer", minimum=0),
    "stop_token_ids": _nullable("array", items={"type": "integer", "minimum": 0}),
    "min_p": _nullable("number", minimum=0, maximum=1),
    "logit_bias": _nullable(
        "object", additionalProperties={"type": "number", "minimum": -100, "maximum": 100},
        description="token id (as a string) -> bias added to its logit",
    ),
}

_ERRORS = {
    "422": _error("Input validation error"),
    "424": _error("Generation Error"),
    "429": _error("Model is overloaded"),
    "500": _error("Incomplete generation"),
}


def _post(
    op: str, summary: str, request: str, response: dict[str, Any], stream: bool = False
) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "Generated Text", **_json(response)}
    if stream:
        ok = {"description": "Generated Text", "content": {"text/event-stream": {"schema": response}}}
    return {
        "post": {
            "tags": ["Text Generation Inference"],
            "summary": summary,
            "operationId": op,
            "requestBody": {"required": True, **_json(_ref(request))},
            "responses": {"200": ok, **_ERRORS},
        }
    }


def _get(op: str, summary: str, response: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "tags": ["Text Generation Inference"],
            "summary": summary,
            "operationId": op,
            "responses": {"200": {"description": summary, **response}},
        }
    }


_TOKEN = {
    "type": "object",
    "required": ["id", "text", "logprob", "special"],
    "properties": {
        "id": {"type": "integer", "format": "int32", "minimum": 0},
        "text": {"type": "string"},
        "logprob": _nullable("number", format="float"),
        "special": {"type": "boolean"},
    },
}

_PARAMETERS = {
    "type": "object",
    "properties": {
        "best_of": _positive("integer", default=None),
        "temperature": _positive("number", format="float"),
        "repetition_penalty": _positive("number", format="float"),
        "frequency_penalty": _nullable("number", format="float", minimum=-2.0, maximum=2.0),
        "top_k": _positive("integer", format="int32"),
        "top_p": _positive("number", format="float", maximum=1.0, exclusiveMaximum=True),
        "typical_p": _positive("number", format="float", maximum=1.0, exclusiveMaximum=True),
        "do_sample": {"type": "boolean", "default": False},
        "max_new_tokens": _positive("integer", format="int32"),
        "return_full_text": _nullable("boolean", default=None),
        "stop": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "truncate": _nullable("integer", minimum=0),
        "watermark": {"type": "boolean", "default": False},
        "details": {"type": "boolean", "default": False},
        "decoder_input_details": {"type": "boolean", "default": False},
        "seed": _nullable("integer", format="int64", minimum=0),
        "top_n_tokens": _nullable("integer", format="int32", minimum=0),
        "grammar": _nullable_ref("GrammarType"),
        "adapter_id": _nullable("string"),
    },
}

_DETAILS: dict[str, Any] = {
    "type": "object",
    "required": ["finish_reason", "generated_tokens", "prefill", "tokens"],
    "properties": {
        "finish_reason": _ref("FinishReason"),
        "generated_tokens": {"type": "integer", "format": "int32", "minimum": 0},
        "seed": _nullable("integer", format="int64", minimum=0),
        "prefill": {"type": "array", "items": _ref("PrefillToken")},
        "tokens": {"type": "array", "items": _ref("Token")},
        "top_tokens": {"type": "array", "items": {"type": "array", "items": _ref("Token")}},
        "best_of_sequences": {"type": "array", "items": _ref("BestOfSequence")},
    },
}

_SCHEMAS: dict[str, Any] = {
    "Token": _TOKEN,
    "SimpleToken": {
        "type": "object",
        "required": ["id", "text", "start", "stop"],
        "properties": {
            "id": {"type": "integer", "format": "int32"},
            "text": {"type": "string"},
            "start": {"type": "integer"},
            "stop": {"type": "integer"},
        },
    },
    "TokenizeResponse": {"type": "array", "items": _ref("SimpleToken")},
    "PrefillToken": {
        "type": "object",
        "required": ["id", "text", "logprob"],
        "properties": {"id": {"type": "integer"}, "text": {"type": "string"}, "logprob": _nullable("number")},
    },
    "FinishReason": {"type": "string", "enum": ["length", "eos_token", "stop_sequence"]},
    "GrammarType": {
        "oneOf": [
            {
                "type": "object",
                "required": ["type", "value"],
                "properties": {"type": {"type": "string", "enum": [t]}, "value": {}},
            }
            for t in ("json", "regex", "json_schema")
        ],
        "discriminator": {"propertyName": "type"},
    },
    "GenerateParameters": _PARAMETERS,
    "GenerateRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {"inputs": {"type": "string"}, "parameters": _ref("GenerateParameters")},
    },
    "CompatGenerateRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "inputs": {"type": "string"},
            "parameters": _ref("GenerateParameters"),
            "stream": {"type": "boolean", "default": False},
        },
    },
    "Details": _DETAILS,
    "BestOfSequence": {
        "type": "object",
        "required": ["generated_text", "finish_reason", "generated_tokens", "prefill", "tokens"],
        "properties": {"generated_text": {"type": "string"}, **_DETAILS["properties"]},
    },
    "GenerateResponse": {
        "type": "object",
        "required": ["generated_text"],
        "properties": {
            "generated_text": {"type": "string"},
            "details": _nullable_ref("Details"),
        },
    },
    "StreamDetails": {
        "type": "object",
        "required": ["finish_reason", "generated_tokens", "input_length"],
        "properties": {
            "finish_reason": _ref("FinishReason"),
            "generated_tokens": {"type": "integer"},
            "input_length": {"type": "integer"},
            "seed": _nullable("integer", format="int64"),
        },
    },
    "StreamResponse": {
        "type": "object",
        "required": ["index", "token"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "token": _ref("Token"),
            "top_tokens": {"type": "array", "items": _ref("Token")},
            "generated_text": _nullable("string", default=None),
            "details": _nullable_ref("StreamDetails"),
        },
    },
    "ErrorResponse": {
        "type": "object",
        "required": ["error", "error_type"],
        "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}},
    },
    "Info": {
        "type": "object",
        "required": [
            "model_id",
            "max_concurrent_requests",
            "max_best_of",
            "max_stop_sequences",
            "max_input_tokens",
            "max_total_tokens",
            "validation_workers",
            "max_client_batch_size",
            "router",
            "version",
        ],
        "properties": {
            "model_id": {"type": "string"},
            "model_sha": _nullable("string"),
            "model_pipeline_tag": _nullable("string"),
            "model_dtype": {"type": "string"},
            "model_device_type": {"type": "string"},
            "max_concurrent_requests": {"type": "integer"},
            "max_best_of": {"type": "integer"},
            "max_stop_sequences": {"type": "integer"},
            "max_input_tokens": {"type": "integer"},
            "max_total_tokens": {"type": "integer"},
            "validation_workers": {"type": "integer"},
            "max_client_batch_size": {"type": "integer"},
            "router": {"type": "string"},
            "version": {"type": "string"},
            "sha": _nullable("string"),
            "docker_label": _nullable("string"),
        },
    },
    "ChatRequest": {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {"type": "array", "items": {"type": "object"}, "minItems": 1},
            "model": _nullable("string"),
            "max_tokens": _nullable("integer", default=1024),
            "temperature": _nullable("number"),
            "top_p": _nullable("number"),
            "seed": _nullable("integer"),
            "stop": _OPENAI_STOP,
            "stream": {"type": "boolean"},
            "stream_options": _STREAM_OPTIONS,
            "n": _nullable("integer", minimum=1, description="choices; each a sequence of its own (seed + index)"),
            "logprobs": _nullable("boolean"),
            "top_logprobs": _nullable("integer"),
            "frequency_penalty": _nullable("number"),
            "presence_penalty": _nullable("number"),
            "tools": _nullable("array", items={"type": "object"}),
            "tool_choice": {},
            "response_format": {},
            "structured_outputs": _nullable("object", description="vLLM's: one of json, regex, choice, json_object"),
            "return_tokens_as_token_ids": _TOKENS_AS_IDS,
            **_VLLM_SAMPLING,
            **_VLLM_OUTPUT,
        },
    },
    "ChatCompletion": {"type": "object", "required": ["id", "created", "model", "choices", "usage"]},
    "ChatCompletionChunk": {"type": "object", "required": ["id", "created", "model", "choices"]},
    "CompletionRequest": {
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": {
                "description": "a string, a list of strings, a list of token ids (taken as they are) or a "
                "list of token-id lists",
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}},
                    {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
                ],
            },
            "model": _nullable("string"),
            "max_tokens": _nullable("integer"),
            "temperature": _nullable("number"),
            "top_p": _nullable("number"),
            "seed": _nullable("integer"),
            "stop": _OPENAI_STOP,
            "stream": {"type": "boolean"},
            "stream_options": _STREAM_OPTIONS,
            "n": _nullable("integer", minimum=1, description="choices per prompt, indexed prompt * n + choice"),
            "suffix": _nullable("string"),
            "repetition_penalty": _nullable("number"),
            "frequency_penalty": _nullable("number"),
            "logprobs": _nullable("integer", minimum=0, maximum=5),
            "echo": _nullable("boolean", description="the prompt first; with logprobs, scored too"),
            "best_of": _nullable("integer", minimum=1, maximum=1, description="only 1 is supported"),
            "response_format": {},
            "structured_outputs": _nullable("object", description="vLLM's: one of json, regex, choice, json_object"),
            "return_tokens_as_token_ids": _TOKENS_AS_IDS,
            **_VLLM_SAMPLING,
            **_VLLM_OUTPUT,
        },
    },
    "CompletionFinal": {"type": "object", "required": ["id", "created", "model", "choices", "usage"]},
    "ModelInfo": {"type": "object", "required": ["id", "object", "created", "owned_by"]},
}


def openapi_document() -> dict[str, Any]:
    """TGI's document: version 3.3.6-dev0, the same operation ids and schema names."""
    paths = {
        "/": _post(
            "compat_generate",
            "Generate tokens if `stream == false` or a stream of token if `stream == true`",
            "CompatGenerateRequest",
            {"type": "array", "items": _ref("GenerateResponse")},
        ),
        "/generate": _post("generate", "Generate tokens", "GenerateRequest", _ref("GenerateResponse")),
        "/generate_stream": _post(
            "generate_stream",
            "Generate a stream of token using Server-Sent Events",
            "GenerateRequest",
            _ref("StreamResponse"),
            stream=True,
        ),
        "/tokenize": _post("tokenize", "Tokenize inputs", "GenerateRequest", _ref("TokenizeResponse")),
        "/chat_tokenize": _post("get_chat_tokenize", "Template and tokenize ChatRequest", "ChatRequest", {}),
        "/v1/chat/completions": _post(
            "chat_completions", "Generate tokens", "ChatRequest", _ref("ChatCompletion")
        ),
        "/v1/completions": _post(
            "completions", "Generate tokens", "CompletionRequest", _ref("CompletionFinal")
        ),
        "/invocations": _post(
            "sagemaker_compatibility", "Generate tokens from Sagemaker request", "CompatGenerateRequest", {}
        ),
        "/vertex": _post(
            "vertex_compatibility", "Generate tokens from Vertex request", "GenerateRequest", {}
        ),
        "/health": _get("health", "Health check method", {}),
        "/info": _get("get_model_info", "Text Generation Inference endpoint info", _json(_ref("Info"))),
        "/metrics": _get("metrics", "Prometheus metrics scrape endpoint", {"content": {"text/plain": {}}}),
        "/v1/models": _get("openai_get_model_info", "Get model info", _json(_ref("ModelInfo"))),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Text Generation Inference",
            "description": "Text Generation Webserver",
            "license": {"name": "Apache 2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            "version": VERSION,
        },
        "paths": paths,
        "components": {"schemas": _SCHEMAS},
        "tags": [
            {"name": "Text Generation Inference", "description": "Hugging Face Text Generation Inference API"}
        ],
    }


SWAGGER_ASSETS = "/docs/assets"  # the swagger-ui-bundle package's files, served by the router (no CDN)

SWAGGER_PAGE = f"""<!doctype html>
<html>
<head><meta charset="utf-8"><title>Text Generation Inference - Swagger UI</title>
<link rel="stylesheet" href="{SWAGGER_ASSETS}/swagger-ui.css"></head>
<body>
<div id="swagger-ui"><p>API document: <a href="/api-doc/openapi.json">/api-doc/openapi.json</a></p></div>
<script src="{SWAGGER_ASSETS}/swagger-ui-bundle.js"></script>
<script>
if (window.SwaggerUIBundle) {{
  window.ui = SwaggerUIBundle({{url: "/api-doc/openapi.json", dom_id: "#swagger-ui"}});
}}
</script>
</body>
</html>
"""


def swagger_assets_dir() -> str:
    """The folder of Swagger UI's static files, from the ``swagger-ui-bundle`` package."""
    import swagger_ui_bundle

    return str(swagger_ui_bundle.swagger_ui_path)
