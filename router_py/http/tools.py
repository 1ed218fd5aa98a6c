"""OpenAI tool calling over a JSON-schema grammar (the approach TGI takes, in our own code).

``tools`` + ``tool_choice`` become one grammar: ``{"function": <one of the tools>}``, each tool an object
whose ``_name`` is the tool's name (first, so a stream knows the name early) followed by the tool's
parameters. With ``auto`` a ``no_tool`` branch carrying a ``content`` string lets the model answer in text.
The generated JSON is
turned back into the assistant message's ``tool_calls`` (arguments as a JSON string, as OpenAI sends them), or
into streamed ``tool_calls`` deltas whose arguments concatenate to that same string.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from router_py.http.errors import HttpError, validation_error

NO_TOOL = "no_tool"
NAME_KEY = "_name"
TOOL_PROMPT = (
    "You can call the functions listed below. Answer with a JSON object of the form "
    '{"function": {"_name": <function name>, <argument>: <value>, ...}}.'
)
_NAME_PREFIX = re.compile(r'\s*\{\s*"function"\s*:\s*\{\s*"_name"\s*:\s*("(?:[^"\\]|\\.)*")\s*([,}])')


def tool_error(message: str) -> HttpError:
    """TGI's 422 ``tool_error``."""
    return HttpError(422, "tool_error", f"Tool error: {message}")


@dataclass(frozen=True)
class ToolPlan:
    """How a chat request uses tools: the tools the template sees, the grammar (a ``{"type": "json"}`` grammar
    dict) and whether the output is a tool call to parse."""

    template_tools: list[dict[str, Any]] | None = None
    grammar: dict[str, Any] | None = None
    tool_prompt: str | None = None

    @property
    def calls_tools(self) -> bool:
        return self.grammar is not None and self.tool_prompt is not None


def plan_tools(
    tools: list[dict[str, Any]] | None, tool_choice: Any, response_format: Any, tool_prompt: str | None
) -> ToolPlan:
    """The grammar and template inputs for ``tools`` / ``tool_choice`` / ``response_format``.

    Raises:
        HttpError: 422 tool_error (unknown tool, bad tool definition) or validation error (response_format
            with tools, bad response_format).
    """
    grammar = response_format_grammar(response_format)
    choice = _choice(tool_choice, bool(tools))
    if not tools or choice == "none":
        return ToolPlan(template_tools=tools or None, grammar=grammar)
    if grammar is not None:
        raise validation_error("`response_format` and `tools` cannot be used together")
    functions = [_function(t, i) for i, t in enumerate(tools)]
    if choice not in ("auto", "required"):
        functions = [f for f in functions if f["name"] == choice]
        if not functions:
            raise tool_error(f"Tool with name {choice} not found")
    schema = tool_schema(functions, allow_text=choice == "auto")
    return ToolPlan(
        tools, {"type": "json", "value": schema}, tool_prompt if tool_prompt is not None else TOOL_PROMPT
    )


def response_format_grammar(response_format: Any) -> dict[str, Any] | None:
    """OpenAI's ``{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}`` or TGI's own
    ``{"type": "json" | "regex", "value": ...}`` -> a ``parameters.grammar`` dict (None for text).

    Raises:
        HttpError: 422 when it is not one of those.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or "type" not in response_format:
        raise validation_error("`response_format` must be an object with a `type`")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind not in ("json", "json_object", "json_schema", "regex"):
        raise validation_error(
            f"`response_format` type `{kind}` is not one of text, json_object, json_schema, " "json, regex"
        )
    return response_format


def _choice(tool_choice: Any, has_tools: bool) -> str:
    """ "auto" | "none" | "required" | a function name (OpenAI's object form or a bare name)."""
    if tool_choice is None:
        return "auto" if has_tools else "none"
    if isinstance(tool_choice, str):
        return tool_choice
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function["name"]
    raise tool_error(f"invalid tool_choice {json.dumps(tool_choice)[:200]}")


def _function(tool: Any, index: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise tool_error(f'tools[{index}] must be {{"type": "function", "function": {{"name": ...}}}}')
    if function["name"] == NO_TOOL:
        raise tool_error(f"the tool name {NO_TOOL} is reserved")
    parameters = function.get("parameters", function.get("arguments")) or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise tool_error(f"tools[{index}].function.parameters must be a JSON schema object")
    return {"name": function["name"], "parameters": parameters}


def tool_schema(functions: list[dict[str, Any]], allow_text: bool) -> dict[str, Any]:
    """``{"function": oneOf(tool objects [+ no_tool])}`` with every tool's ``$defs`` lifted to the root.

    Raises:
        HttpError: two tools define one ``$defs`` name differently.
    """
    defs: dict[str, Any] = {}
    branches = []
    for f in functions:
        params = f["parameters"]
        for name, definition in params.get("$defs", {}).items():
            if defs.setdefault(name, definition) != definition:
                raise tool_error(f"tools define `$defs/{name}` differently")
        branches.append(
            _branch(
                f["name"],
                params.get("properties", {}),
                params.get("required", []),
                params.get("additionalProperties") is True,
            )
        )
    if allow_text:
        branches.append(_branch(NO_TOOL, {"content": {"type": "string"}}, ["content"], False))
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"function": {"oneOf": branches}},
        "required": ["function"],
        "additionalProperties": False,
    }
    if defs:
        schema["$defs"] = defs
    return schema


def _branch(name: str, properties: dict[str, Any], required: list[str], extra: bool) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {NAME_KEY: {"const": name}, **properties},
        "required": [NAME_KEY, *required],
        "additionalProperties": extra,
    }


# ---- output -> OpenAI message ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolOutput:
    """A parsed generation: ``calls`` (OpenAI tool_calls) or, for no_tool, ``content``."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    content: str | None = None


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_output(text: str) -> ToolOutput:
    """The generated text -> tool calls.

    Raises:
        HttpError: 422 tool_error when the text is not a complete call (e.g. cut by max_tokens).
    """
    try:
        call = json.loads(text)["function"]
        name = call.pop(NAME_KEY)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        partial = _partial_text_answer(text)
        if partial is not None:
            return ToolOutput(content=partial)
        raise tool_error(f"Failed to parse generated text: {err} {text!r}") from err
    if name == NO_TOOL:
        return ToolOutput(content=str(call.get("content", "")))
    arguments = json.dumps(call, ensure_ascii=False)
    return ToolOutput(
        calls=[{"id": new_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}]
    )


_TEXT_PREFIX = re.compile(r'\s*\{\s*"function"\s*:\s*\{\s*"_name"\s*:\s*"no_tool"\s*,\s*"content"\s*:\s*"')


def _partial_text_answer(text: str) -> str | None:
    """A ``no_tool`` answer cut short (max_tokens): the content generated so far; None for anything else."""
    match = _TEXT_PREFIX.match(text)
    if match is None:
        return None
    body = text[match.end() :]
    for cut in range(min(len(body), 12) + 1):  # drop a trailing partial escape sequence
        try:
            return json.loads('"' + body[: len(body) - cut] + '"')
        except ValueError:
            continue
    return None


class ToolStream:
    """Turns streamed token texts into OpenAI ``tool_calls`` deltas.

    The name is sent in the first delta once the text holds it; the arguments then follow as they are
    generated, holding back trailing ``}`` and whitespace (one of those closes the outer object); their
    concatenation equals :func:`parse_output`'s arguments up to whitespace. A ``no_tool`` answer is sent as
    one content delta at the end.
    """

    def __init__(self) -> None:
        self.text = ""
        self.name: str | None = None
        self.id = new_call_id()
        self._args_start = 0
        self._sent = ""

    def push(self, token_text: str) -> list[dict[str, Any]]:
        """Deltas (``choices[0].delta`` bodies) for one more token."""
        self.text += token_text
        out = []
        if self.name is None:
            match = _NAME_PREFIX.match(self.text)
            if match is None:
                return []
            self.name = json.loads(match.group(1))
            self._args_start = match.end() if match.group(2) == "," else -1
            if self.name == NO_TOOL:
                return []
            out.append(
                _tool_delta(
                    {
                        "index": 0,
                        "id": self.id,
                        "type": "function",
                        "function": {"name": self.name, "arguments": ""},
                    }
                )
            )
        if self.name != NO_TOOL:
            out.extend(self._arguments(self._safe_arguments()))
        return out

    def finish(self) -> list[dict[str, Any]]:
        """Deltas at the end of the generation.

        Raises:
            HttpError: 422 tool_error when the text is not a complete call.
        """
        parsed = parse_output(self.text)
        if parsed.content is not None:
            return [{"role": "assistant", "content": parsed.content}]
        out = [] if self.name is not None else self.push("")
        return out + self._arguments(self._final_arguments())

    def _body(self) -> str:
        return "" if self._args_start < 0 else self.text[self._args_start :]

    def _safe_arguments(self) -> str:
        if self._args_start < 0:
            return ""
        return "{" + self._body().lstrip().rstrip(" \t\r\n}")

    def _final_arguments(self) -> str:
        if self._args_start < 0:
            return "{}"
        body = self._body().rstrip()
        return "{" + body.lstrip()[: len(body.lstrip()) - 1].rstrip()  # drop the outer object's "}"

    def _arguments(self, full: str) -> list[dict[str, Any]]:
        if not full.startswith(self._sent) or len(full) == len(self._sent):
            return []
        delta, self._sent = full[len(self._sent) :], full
        return [_tool_delta({"index": 0, "function": {"arguments": delta}})]


def _tool_delta(call: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "tool_calls": [call]}


# ---- history -> template --------------------------------------------------------------------------------


def template_messages(messages: list[dict[str, Any]], native_tool_calls: bool) -> list[dict[str, Any]]:
    """Messages as the chat template gets them. Assistant ``tool_calls`` turns: for a template that renders
    ``tool_calls`` itself, arguments become objects (what HF templates expect); for any other template the
    calls are written into ``content`` in the grammar's own JSON form. ``None`` content becomes "" (text
    templates concatenate it)."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls and isinstance(calls, list):
            m = (
                _with_object_arguments(m, calls)
                if native_tool_calls
                else {**m, "content": _calls_text(calls)}
            )
        if m.get("content") is None:
            m = {**m, "content": ""}
        out.append(m)
    return out


def _arguments_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _with_object_arguments(message: dict[str, Any], calls: list[Any]) -> dict[str, Any]:
    fixed = []
    for c in calls:
        if isinstance(c, dict) and isinstance(c.get("function"), dict):
            c = {
                **c,
                "function": {**c["function"], "arguments": _arguments_object(c["function"].get("arguments"))},
            }
        fixed.append(c)
    return {**message, "tool_calls": fixed}


def _calls_text(calls: list[Any]) -> str:
    texts = []
    for c in calls:
        function = c.get("function", {}) if isinstance(c, dict) else {}
        arguments = _arguments_object(function.get("arguments"))
        body = {NAME_KEY: function.get("name", ""), **(arguments if isinstance(arguments, dict) else {})}
        texts.append(json.dumps({"function": body}, ensure_ascii=False))
    return "\n".join(texts)


def with_tool_prompt(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], prompt: str
) -> list[dict[str, Any]]:
    """For a template that does not render ``tools``: the prompt and the tools' JSON appended to the last user
    message (a system message of its own when there is none)."""
    text = f"{prompt}\n{json.dumps(tools, ensure_ascii=False)}"
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            content = messages[i].get("content") or ""
            if isinstance(content, list):
                content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
            return [*messages[:i], {**messages[i], "content": f"{content}\n---\n{text}"}, *messages[i + 1 :]]
    return [{"role": "system", "content": text}, *messages]
