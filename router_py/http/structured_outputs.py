"""vLLM's ``structured_outputs`` field on ``/v1/chat/completions`` and ``/v1/completions``
(``extra_body={"structured_outputs": {...}}`` with the ``openai`` client): exactly one constraint of ``json``
(a schema, object or string), ``regex``, ``choice`` (a list of strings: the output is one of them) or
``json_object`` (true: any JSON object), turned into TGI's ``parameters.grammar``. TGI would ignore the field,
so the output came back unconstrained without a word; what cannot be served here (vLLM's ``grammar``, EBNF;
``structural_tag``; its whitespace and additional-properties switches) is a 422 naming it. vLLM's older
``guided_*`` fields are read as the same constraints (:func:`with_guided`).
"""

from __future__ import annotations

from typing import Any

from router_py.http.errors import validation_error

_CONSTRAINTS = ("json", "regex", "choice", "json_object", "grammar", "structural_tag")
_SERVED = ("json", "regex", "choice", "json_object")
_SWITCHES = ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern")
_REGEX_SPECIAL = frozenset(".^$*+?{}[]\\|()")


def structured_outputs_grammar(value: Any) -> dict[str, Any] | None:
    """A ``parameters.grammar`` dict for ``structured_outputs`` (None when absent or null).

    Raises:
        HttpError: 422 validation: not an object, not exactly one constraint, one not served here, a choice
            list that is not non-empty strings, an unknown key.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise validation_error("`structured_outputs` must be an object")
    unknown = sorted(k for k in value if k not in _CONSTRAINTS and k not in _SWITCHES)
    if unknown:
        raise validation_error(f"`structured_outputs` has unknown fields: {', '.join(unknown)}")
    switched = [k for k in _SWITCHES if value.get(k) not in (None, False)]
    if switched:
        raise validation_error(f"`structured_outputs.{switched[0]}` is not supported")
    given = [k for k in _CONSTRAINTS if value.get(k) is not None]
    if len(given) != 1:
        raise validation_error(
            f"`structured_outputs` needs exactly one of {', '.join(_SERVED)}. Given: {', '.join(given) or 'none'}"
        )
    kind = given[0]
    if kind not in _SERVED:
        raise validation_error(f"`structured_outputs.{kind}` is not supported: use json, regex or choice")
    return _grammar(kind, value[kind])


def _grammar(kind: str, value: Any) -> dict[str, Any] | None:
    if kind == "json":
        return {"type": "json", "value": value}
    if kind == "json_object":
        return {"type": "json_object"} if value else None
    if kind == "regex":
        if not isinstance(value, str):
            raise validation_error("`structured_outputs.regex` must be a string")
        return {"type": "regex", "value": value}
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise validation_error("`structured_outputs.choice` must be a list of non-empty strings")
    return {"type": "regex", "value": "(" + "|".join(_escape(c) for c in value) + ")"}


def _escape(text: str) -> str:
    """``text`` as a regex matching it literally (only the metacharacters escaped: every engine reads that)."""
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)


def output_grammar(response_format_grammar: dict[str, Any] | None, structured_outputs: Any) -> dict[str, Any] | None:
    """The request's grammar: ``response_format``'s (already read) or ``structured_outputs``'; both is a 422."""
    grammar = structured_outputs_grammar(structured_outputs)
    if grammar is None:
        return response_format_grammar
    if response_format_grammar is not None:
        raise validation_error("`structured_outputs` and `response_format` (or `tools`) cannot be used together")
    return grammar


# NOTE: vLLM's fields before structured_outputs (up to 0.10), still sent by older clients and examples
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar",
           "guided_whitespace_pattern": "whitespace_pattern"}


def with_guided(body: dict[str, Any], structured_outputs: Any) -> Any:
    """``structured_outputs``, or vLLM's older ``guided_json`` / ``guided_regex`` / ``guided_choice`` /
    ``guided_grammar`` / ``guided_whitespace_pattern`` gathered into one (``guided_decoding_backend`` names an
    engine: ignored). Raises HttpError 422 when both kinds are given."""
    guided = {_GUIDED[k]: v for k, v in body.items() if k in _GUIDED and v is not None}
    if not guided:
        return structured_outputs
    if structured_outputs is not None:
        raise validation_error("`structured_outputs` and `guided_*` fields cannot be used together")
    return guided
