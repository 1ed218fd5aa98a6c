"""``parameters.grammar`` (and chat ``response_format``) validated as TGI does, into the v3 proto's grammar
fields.

TGI's rules: a JSON grammar's value is a schema object or a string holding one; it must be a valid draft
2020-12 schema and have ``properties``; ``json_schema`` carries ``{"name"?, "schema", "strict"?}``; a regex is
passed as is. Errors read ``grammar is not valid: ...``; with grammars disabled every grammar is ``grammar is
not supported``. A (sub)schema with ``properties`` and no ``type`` is an object, as TGI's engine (outlines)
reads it and TGI's own grammar example relies on (:func:`objects_typed`).
On top of TGI, the grammar is also checked by the engine the shard runs (llguidance), so a schema keyword the
shard cannot enforce is refused here, before the request queues, and never fails a batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import multiprocessing
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import jsonschema
import llguidance

from router_py.http.errors import HttpError, validation_error
from router_py.backend_api import ValidRequest

# generate.v3 GrammarType
GRAMMAR_TYPE_NONE, GRAMMAR_TYPE_JSON, GRAMMAR_TYPE_REGEX = 0, 1, 2
# OpenAI's {"type": "json_object"}: any JSON object (no schema given)
ANY_OBJECT: dict[str, Any] = {"type": "object"}
VALIDATION_PREFIX = validation_error("").message


@dataclass(frozen=True)
class ValidGrammar:
    """What the shard gets: ``text`` in NextTokenChooserParameters.grammar, ``kind`` in grammar_type."""

    kind: int
    text: str


def validate_grammar(grammar: dict[str, Any], disabled: bool) -> ValidGrammar:
    """A deserialized ``{"type", "value"}`` grammar -> the proto fields.

    Raises:
        HttpError: 422 validation error in TGI's words.
    """
    if disabled:
        raise validation_error("grammar is not supported")
    kind = grammar.get("type")
    if kind == "regex":
        value = grammar.get("value")
        if not isinstance(value, str):
            raise validation_error("grammar is not valid: a regex grammar's value must be a string")
        return ValidGrammar(GRAMMAR_TYPE_REGEX, value)
    if kind == "json_object" and grammar.get("value") is None:
        return json_grammar(ANY_OBJECT, need_properties=False)
    if kind == "json_schema":
        config = grammar.get("value", grammar.get("json_schema"))
        if not isinstance(config, dict) or not isinstance(config.get("schema"), (dict, str)):
            raise validation_error("grammar is not valid: json_schema needs a `schema` object")
        return json_grammar(_schema_value(config["schema"]))
    return json_grammar(_schema_value(grammar.get("value")))


def _schema_value(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise validation_error(f"grammar is not valid: {err}") from err
    if not isinstance(value, dict):
        raise validation_error("grammar is not valid: a JSON grammar's value must be a JSON schema object")
    return value


def json_grammar(schema: dict[str, Any], need_properties: bool = True) -> ValidGrammar:
    """Check a JSON schema (draft 2020-12 meta-schema, TGI's ``properties`` rule, the engine) -> proto fields.

    Raises:
        HttpError: 422 ``grammar is not valid: ...``.
    """
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise validation_error(f"grammar is not valid: {err.message}") from err
    if need_properties and "properties" not in schema:
        raise validation_error("grammar is not valid: Grammar must have a 'properties' field")
    return ValidGrammar(GRAMMAR_TYPE_JSON, json.dumps(objects_typed(schema), ensure_ascii=False))


# Draft 2020-12 keywords (and older names still met) whose value is one subschema, a list of subschemas, or a
# map of names to subschemas; every other value (``const``, ``enum``, ``default``, ...) is data, not a schema.
_ONE_SCHEMA = frozenset(
    ("items", "additionalItems", "additionalProperties", "unevaluatedItems", "unevaluatedProperties",
     "contains", "propertyNames", "not", "if", "then", "else")
)
_SCHEMA_LIST = frozenset(("prefixItems", "items", "allOf", "anyOf", "oneOf"))
_SCHEMA_MAP = frozenset(("properties", "patternProperties", "dependentSchemas", "$defs", "definitions"))


def objects_typed(schema: Any) -> Any:
    """``schema`` with ``"type": "object"`` added to every subschema that has ``properties`` and no ``type``.
    The shard's engine follows JSON Schema, where such a schema also admits any non-object (a bare number
    satisfies it); outlines, behind TGI, reads ``properties`` as an object."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAP and isinstance(value, dict):
            value = {name: objects_typed(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LIST and isinstance(value, list):
            value = [objects_typed(sub) for sub in value]
        elif key in _ONE_SCHEMA:
            value = objects_typed(value)
        out[key] = value
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out


def engine_check(kind: int, text: str) -> None:
    """Compile with the shard's engine, without a tokenizer: 0.3 ms for a realistic schema, ~40 ms for a 50 x
    200-value enum schema (the engine's limits bound the worst case). Blocking: run it off the event loop
    (:func:`with_grammar`).

    Raises:
        HttpError: 422 ``grammar is not valid: <engine message>``.
    """
    if kind == GRAMMAR_TYPE_REGEX:
        source = llguidance.LLMatcher.grammar_from_regex(text)
    else:
        source = llguidance.LLMatcher.grammar_from_json_schema(text)
    message = llguidance.LLMatcher.validate_grammar(source)
    if message and not message.startswith("WARNING"):
        raise validation_error(f"grammar is not valid: {_first_error_line(message)}")


def _first_error_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    detail = next((line for line in lines if line.startswith("error:")), "")
    return f"{lines[0]} {detail}".strip() if detail else lines[0]


async def with_grammar(valid: ValidRequest, grammar: dict[str, Any] | None, disabled: bool) -> ValidRequest:
    """``valid`` with its checked grammar in the sampling parameters (TGI's last validation step).

    The checks (meta-schema ~35 ms, engine compile ~40 ms for a 50 x 200-value enum schema) hold the GIL, so
    they run in a worker process: a slow grammar delays only its own request, never the event loop the
    batching loop shares, nor the queue (measured in docs/structured-output.md). Results, refusals included,
    are cached by grammar text, so a repeated schema (an agent's tools) costs one dictionary lookup.

    Raises:
        HttpError: 422 in TGI's words.
    """
    if grammar is None:
        return valid
    if disabled:
        raise validation_error("grammar is not supported")
    key = json.dumps(grammar, sort_keys=True, ensure_ascii=False)
    result = _CHECKED.get(key)
    if result is None:
        result = await asyncio.get_running_loop().run_in_executor(_pool(), check_in_worker, grammar)
        _CHECKED[key] = result
        while len(_CHECKED) > CHECK_CACHE_SIZE:
            _CHECKED.popitem(last=False)
    else:
        _CHECKED.move_to_end(key)
    kind, text, error = result
    if error is not None:
        raise validation_error(error)
    sampling = dataclasses.replace(valid.sampling, grammar=text, grammar_type=kind)
    return dataclasses.replace(valid, sampling=sampling)


def check_in_worker(grammar: dict[str, Any]) -> tuple[int, str, str | None]:
    """Runs in the worker process: (kind, text, None) for a valid grammar, (0, "", message) for a refusal."""
    try:
        valid = validate_grammar(grammar, disabled=False)
        engine_check(valid.kind, valid.text)
    except HttpError as err:
        return GRAMMAR_TYPE_NONE, "", err.message.removeprefix(VALIDATION_PREFIX)
    return valid.kind, valid.text, None


CHECK_CACHE_SIZE = 512
_CHECKED: OrderedDict[str, tuple[int, str, str | None]] = OrderedDict()
_POOL: ProcessPoolExecutor | None = None


def start_workers() -> None:
    """Start the check processes now (they take ~2 s to import on a loaded 2-core machine)."""
    for _ in range(WORKERS):
        _pool().submit(int)


WORKERS = 2


def _pool() -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None:
        # NOTE: spawn, not fork: the router has threads (gRPC, uvicorn) that fork would copy mid-state.
        _POOL = ProcessPoolExecutor(max_workers=WORKERS, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_exit_with_router, initargs=(os.getpid(),))
    return _POOL


def _exit_with_router(router: int) -> None:
    """In each check process: exit once the router is gone, however it ended (a killed router's pool does not
    stop its workers, which then outlived it). Polled, since a parent-death signal would follow the router's
    thread that happened to start the process, not the router."""

    def watch() -> None:
        while os.getppid() == router:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-router", daemon=True).start()
