"""Checks a create body and splits it into offloadd's own options and the upstream's request."""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from offloadd.config import Config
from offloadd.errors import BadRequest

ROLES = ("system", "user", "assistant", "tool", "developer", "function")
ACCESS = ("public", "private")
CONVERSATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
OWN_FIELDS = (
    "access",
    "timeout",
    "connect_timeout",
    "conversation_id",
    "from_status_url",
    "from_bearer_token",
    "webhook_url",
    "session_stream",
)


@dataclass(frozen=True)
class Options:
    """offloadd's own fields of a create request (never sent upstream)."""

    access: str | None  # None: public, or the earlier request's when continuing
    timeout: float
    connect_timeout: float
    conversation_id: str | None
    from_status_url: str | None
    from_bearer_token: str | None
    webhook_url: str | None
    session_stream: str | None = None  # an app stream the answer is appended to (JSON)


@dataclass(frozen=True)
class ChatRequest:
    options: Options
    parameters: dict  # what goes upstream: the client's fields, stream forced on
    usage_added: bool  # offloadd asked for include_usage, the client did not
    stream: bool = False  # the caller asked for a stream (as the OpenAI API reads `stream`)
    background: bool = False  # Responses API: answer at once, run on
    previous_response_id: str | None = None  # Responses API: continue that response


def json_object(raw: bytes) -> dict:
    """A create body must be one JSON object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    return body


def model_of(params: dict, config: Config) -> None:
    """`model`, defaulting to the server's."""
    params.setdefault("model", config.default_model)
    if not isinstance(params["model"], str) or not params["model"]:
        raise BadRequest("`model` must be a non-empty string", code="invalid_model")


def parse_body(raw: bytes, config: Config) -> ChatRequest:
    """The create body, validated; raises BadRequest with a sentence a caller can act on."""
    body = json_object(raw)
    options = options_of(body, config)
    params = {k: v for k, v in body.items() if k not in OWN_FIELDS}
    params["messages"] = messages(body.get("messages"))
    model_of(params, config)
    stream_options = params.get("stream_options")
    if stream_options is None:
        stream_options = {}
    if not isinstance(stream_options, dict):
        raise BadRequest("`stream_options` must be an object", code="invalid_parameter")
    usage_added = stream_options.get("include_usage") is not True
    asked_stream = params.get("stream") is True
    params["stream"] = True
    params["stream_options"] = {**stream_options, "include_usage": True}
    return ChatRequest(options, params, usage_added, asked_stream)


def messages(value: object) -> list:
    """`messages` as a list of messages; the original also took that list JSON-encoded."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise BadRequest(
                "`messages` is a string but not a JSON-encoded list of messages",
                code="invalid_messages",
            ) from None
    if value is None:
        raise BadRequest("`messages` is required", code="invalid_messages")
    if not isinstance(value, list) or not value:
        raise BadRequest("`messages` must be a non-empty list", code="invalid_messages")
    for i, message in enumerate(value):
        _message(i, message)
    return value


def _message(i: int, message: object) -> None:
    if not isinstance(message, dict):
        raise BadRequest(f"messages[{i}] must be an object", code="invalid_messages")
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise BadRequest(
            f"messages[{i}].role must be one of {', '.join(ROLES)}",
            code="invalid_messages",
        )
    content = message.get("content")
    may_be_empty = role == "assistant" and ("tool_calls" in message or "function_call" in message)
    if content is None and not may_be_empty:
        raise BadRequest(f"messages[{i}].content is required", code="invalid_messages")
    if content is not None and not isinstance(content, str | list):
        raise BadRequest(
            f"messages[{i}].content must be a string or a list of parts",
            code="invalid_messages",
        )


def options_of(body: dict, config: Config) -> Options:
    access = body.get("access")
    if access is not None and access not in ACCESS:
        raise BadRequest("`access` must be `public` or `private`", code="invalid_access")
    return Options(
        access=access,
        timeout=_seconds(body, "timeout", config.default_timeout, 1, config.max_timeout),
        connect_timeout=_seconds(
            body, "connect_timeout", config.default_connect_timeout, 1, config.max_connect_timeout
        ),
        conversation_id=_conversation_id(body.get("conversation_id")),
        from_status_url=_optional_str(body, "from_status_url"),
        from_bearer_token=_optional_str(body, "from_bearer_token"),
        webhook_url=_optional_str(body, "webhook_url"),
        session_stream=_optional_str(body, "session_stream"),
    )


def body_schema(config: Config) -> dict:
    """The create body as JSON Schema, from the same definitions and limits the checks
    above use, so the published API description cannot drift from them."""
    message = {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"enum": list(ROLES)},
            "content": {"type": ["string", "array", "null"]},
        },
    }
    return {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {
                "oneOf": [
                    {"type": "array", "items": message, "minItems": 1},
                    {"type": "string", "description": "the list of messages, JSON-encoded"},
                ]
            },
            "model": {"type": "string", "minLength": 1},
            "access": {"enum": list(ACCESS)},
            "timeout": {"type": "number", "minimum": 1, "maximum": config.max_timeout},
            "connect_timeout": {
                "type": "number",
                "minimum": 1,
                "maximum": config.max_connect_timeout,
            },
            "conversation_id": {"type": "string", "pattern": f"^{CONVERSATION_ID.pattern}$"},
            **{
                name: {"type": "string"} for name in OWN_FIELDS if name.endswith(("_url", "_token"))
            },
            "session_stream": {
                "type": "string",
                "description": "an application stream (JSON) the answer is appended to",
            },
        },
        "additionalProperties": True,
    }


def _seconds(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return min(default, high)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"`{name}` must be a number of seconds from {low:g} to {high:g}")
    return value  # as given: 90 stays 90 in the status document


def _conversation_id(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not CONVERSATION_ID.fullmatch(value):
        raise BadRequest(
            "`conversation_id` must be 1–128 letters, digits, `.`, `_`, `:` or `-`",
            code="invalid_conversation_id",
        )
    return value


def _optional_str(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"`{name}` must be a string")
    return value
