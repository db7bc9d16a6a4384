"""Structured output fields of a request, turned into one ``Grammar`` (torch-free).

OpenAI's ``response_format`` (``{"type": "json_object"}``, or ``{"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}``) and vLLM's ``guided_json`` (a schema, as an
object or as JSON text), ``guided_regex``, ``guided_choice`` and ``structured_outputs``
(``{"json" | "regex" | "choice" | "json_object": ...}``) all describe the grammar the output
must follow; at most one of them may ask for one. The gateway checks their shape and size; the
target compiles the grammar (``specgrove.grammar``) and a grammar that does not compile comes
back as a 400 from there. The grammar always holds: ``strict`` is accepted either way.
"""
from __future__ import annotations

import json
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from specgrove.errors import InvalidRequest
from specgrove.sampling_params import MAX_GRAMMAR_CHOICES, Grammar

Schema = Union[dict[str, Any], bool]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str | None = None  # OpenAI requires a name; it names the schema, nothing more
    description: str | None = None
    schema_: Schema | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs``: the kinds this server compiles (others are a 400)."""

    model_config = ConfigDict(extra="forbid")
    json_: Any = Field(None, alias="json")  # a schema object or its JSON text; checked by _grammar
    regex: str | None = None
    choice: list[str] | None = Field(None, max_length=MAX_GRAMMAR_CHOICES)
    json_object: bool | None = None


class StructuredOutputFields(BaseModel):
    """The request fields that ask for a grammar (mixed into the request schemas)."""

    response_format: ResponseFormat | None = None
    guided_json: Any = None  # a schema object or its JSON text; checked by _grammar
    guided_regex: str | None = None
    guided_choice: list[str] | None = Field(None, max_length=MAX_GRAMMAR_CHOICES)
    structured_outputs: StructuredOutputs | None = None

    def grammar(self) -> Grammar | None:
        """The one grammar these fields ask for, or None; a 400 naming the field otherwise."""
        asked = [(field, g) for field, g in self._asked() if g is not None]
        if len(asked) > 1:
            names = ", ".join(field for field, _ in asked)
            raise InvalidRequest(asked[1][0], f"give one structured output format, not several ({names})")
        return asked[0][1] if asked else None

    def _asked(self):
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            yield "response_format", Grammar("json_object")
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                raise InvalidRequest("response_format.json_schema.schema", "a json_schema response format needs a schema")
            yield "response_format", _grammar("response_format.json_schema.schema", "json_schema", fmt.json_schema.schema_)
        yield "guided_json", _grammar("guided_json", "json_schema", self.guided_json)
        yield "guided_regex", _grammar("guided_regex", "regex", self.guided_regex)
        yield "guided_choice", _grammar("guided_choice", "choice", self.guided_choice)
        so = self.structured_outputs
        if so is not None:
            kinds = [(f"structured_outputs.{name}", kind, value) for name, kind, value in
                     (("json", "json_schema", so.json_), ("regex", "regex", so.regex),
                      ("choice", "choice", so.choice),
                      ("json_object", "json_object", True if so.json_object else None)) if value is not None]
            if len(kinds) > 1:
                raise InvalidRequest(kinds[1][0], "give one kind of structured output, not several")
            for where, kind, value in kinds:
                yield where, _grammar(where, kind, value)


def _grammar(field: str, kind: str, value) -> Grammar | None:
    """``value`` (a schema object or JSON text, a pattern, a list of choices) as a Grammar."""
    if value is None:
        return None
    try:
        if kind == "json_object":
            return Grammar("json_object")
        if kind == "choice":
            return Grammar("choice", choices=tuple(value))
        if kind == "json_schema":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError as exc:
                    raise InvalidRequest(field, f"the schema is not valid JSON: {exc}") from exc
            if not isinstance(value, (dict, bool)):
                raise InvalidRequest(field, "a JSON schema is an object (or true / false), or its JSON text")
            return Grammar("json_schema", json.dumps(value, ensure_ascii=False))
        return Grammar("regex", value)
    except InvalidRequest as exc:
        if exc.field == field:
            raise
        raise InvalidRequest(field, exc.reason) from exc
