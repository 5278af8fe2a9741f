"""Anthropic's Messages API: the body of a create (checked only as far as its shape, so the
upstream's own 400 stays the authority on the rest), and the `message` object assembled
from its named events, trusting no event's shape.

A stopped or crashed answer has a `message_start` but no final `message_delta`: it keeps
the input tokens the upstream counted and an estimate of the output tokens, marked as one
(`usage.output_tokens_estimated`), as token budgets count it.
"""

from __future__ import annotations

from typing import Any

import orjson

from offloadd.config import Config
from offloadd.domain.validate import OWN_FIELDS, ChatRequest, json_object, options_of
from offloadd.errors import BadRequest

ROLES = ("user", "assistant", "system")  # `system` turns: a beta the upstream judges
MAX_MESSAGES = 100_000
MAX_TOKENS = 1_048_576  # above any model's output limit: a larger one is a mistake
# every content block type a request may carry (Anthropic's, betas included)
BLOCK_TYPES = frozenset(
    (
        "text image document search_result thinking redacted_thinking tool_use tool_result "
        "server_tool_use web_search_tool_result web_fetch_tool_result "
        "code_execution_tool_result bash_code_execution_tool_result "
        "text_editor_code_execution_tool_result tool_search_tool_result container_upload "
        "tool_reference mcp_tool_use mcp_tool_result compaction advisor_tool_result "
        "tool_addition tool_removal mcp_tool_listing fallback"
    ).split()
)
OBJECTS = ("metadata", "tool_choice", "thinking")


def _invalid(message: str, code: str = "invalid_request") -> BadRequest:
    return BadRequest(message, code=code)


def parse_messages_body(raw: bytes, config: Config) -> ChatRequest:
    """A Messages API create body; offloadd's own fields (`timeout`, `access`, …) taken
    out, `stream` forced on (offloadd always streams upstream)."""
    body = json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model: must be a non-empty string", "invalid_model")
    tokens = body.get("max_tokens")
    if tokens is None:
        raise _invalid("max_tokens: Field required", "invalid_max_tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or not 0 <= tokens <= MAX_TOKENS:
        raise _invalid(
            f"max_tokens: must be an integer from 0 to {MAX_TOKENS}", "invalid_max_tokens"
        )
    _messages(body.get("messages"))
    _system(body.get("system"))
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _invalid("stream: must be true or false")
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        raise _invalid("stop_sequences: must be a list of strings")
    for name in OBJECTS:
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise _invalid(f"{name}: must be an object")
    _tools(body.get("tools"))
    params = {k: v for k, v in body.items() if k not in OWN_FIELDS}
    asked_stream = params.get("stream") is True
    params["stream"] = True
    return ChatRequest(options_of(body, config), params, usage_added=False, stream=asked_stream)


def _messages(value: object) -> None:
    if value is None:
        raise _invalid("messages: Field required", "invalid_messages")
    if not isinstance(value, list) or not value or len(value) > MAX_MESSAGES:
        raise _invalid(
            f"messages: must be a list of 1 to {MAX_MESSAGES} messages", "invalid_messages"
        )
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise _invalid(f"messages.{i}: must be an object", "invalid_messages")
        if message.get("role") not in ROLES:
            raise _invalid(
                f"messages.{i}.role: must be one of {', '.join(ROLES)}", "invalid_messages"
            )
        _content(f"messages.{i}.content", message.get("content"))


def _content(where: str, content: object) -> None:
    """A string, or a list of blocks of known types (their fields are the upstream's)."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _invalid(f"{where}: must be a string or a list of content blocks", "invalid_messages")
    for j, block in enumerate(content):
        if not isinstance(block, dict):
            raise _invalid(f"{where}.{j}: a content block must be an object", "invalid_messages")
        kind = block.get("type")
        if not isinstance(kind, str) or kind not in BLOCK_TYPES:
            raise _invalid(
                f"{where}.{j}.type: unknown content block type {kind!r}", "invalid_messages"
            )


def _system(value: object) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list) or not all(
        isinstance(b, dict) and b.get("type") == "text" for b in value
    ):
        raise _invalid("system: must be a string or a list of text blocks")


def _tools(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise _invalid("tools: must be a list of tools")
    for i, tool in enumerate(value):
        named = isinstance(tool, dict) and (
            isinstance(tool.get("name"), str) or isinstance(tool.get("type"), str)
        )
        if not named:
            raise _invalid(f"tools.{i}: must be an object with a `name` (or a `type`)")


def messages_schema() -> dict:
    """The create body as JSON Schema, from the checks' own definitions: no stricter than
    them (what they take, it takes); the upstream judges the rest."""
    message = {
        "type": "object",
        "required": ["role"],
        "properties": {"role": {"enum": list(ROLES)}},
    }
    return {
        "type": "object",
        "required": ["model", "max_tokens", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "max_tokens": {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS},
            "messages": {"type": "array", "items": message, "minItems": 1},
            "system": {"type": ["string", "array"]},
            "stream": {"type": ["boolean", "null"]},
        },
        "additionalProperties": True,
    }


# --- the message object, from the stream ----------------------------------------------


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _index(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tokens(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class MessageAssembly:
    """Folds `message_start`, the content blocks' start/delta/stop and `message_delta`
    into Anthropic's `message` object (`ping` and unknown events add nothing)."""

    def __init__(self) -> None:
        self.message: dict | None = None
        self.blocks: dict[int, dict] = {}
        self.json: dict[int, str] = {}  # a tool call's input as streamed so far
        self.usage: dict = {}
        self.delta_seen = False  # a `message_delta` brought the final counts

    def empty(self) -> bool:
        return self.message is None and not self.blocks

    def add(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self.message = dict(_dict(event.get("message")))
            self.usage = dict(_dict(self.message.get("usage")))
        elif kind == "message_delta":
            delta = _dict(event.get("delta"))
            message = self.message = self.message if self.message is not None else {}
            for key in ("stop_reason", "stop_sequence"):
                if key in delta:
                    message[key] = delta[key]
            usage = _dict(event.get("usage"))
            self.usage.update({k: v for k, v in usage.items() if v is not None})
            self.delta_seen = self.delta_seen or "output_tokens" in usage
        elif (index := _index(event.get("index"))) is not None:
            self._block(kind, index, event)

    def _block(self, kind: Any, index: int, event: dict) -> None:
        if kind == "content_block_start" and isinstance(event.get("content_block"), dict):
            self.blocks[index] = dict(event["content_block"])
            return
        block = self.blocks.get(index)
        if block is None or kind != "content_block_delta":
            return
        delta = _dict(event.get("delta"))
        kind = delta.get("type")
        for name, key in (("text_delta", "text"), ("thinking_delta", "thinking")):
            if kind == name and isinstance(delta.get(key), str):
                block[key] = str(block.get(key) or "") + delta[key]
        if kind == "signature_delta" and isinstance(delta.get("signature"), str):
            block["signature"] = delta["signature"]
        if kind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            self.json[index] = self.json.get(index, "") + delta["partial_json"]
        if kind == "citations_delta" and isinstance(delta.get("citation"), dict):
            block["citations"] = [*(block.get("citations") or []), delta["citation"]]

    def _content(self) -> list:
        out = []
        for index in sorted(self.blocks):
            block = dict(self.blocks[index])
            if index in self.json:
                block["input"] = _parsed(self.json[index], block.get("input"))
            out.append(block)
        return out

    def _text(self) -> str:
        return "".join(str(b.get("text") or b.get("thinking") or "") for b in self.blocks.values())

    def body(self) -> dict:
        message = dict(self.message or {})
        message.setdefault("type", "message")
        message.setdefault("role", "assistant")
        message["content"] = self._content()
        message.setdefault("stop_reason", None)
        message.setdefault("stop_sequence", None)
        usage = dict(self.usage)
        if not self.delta_seen:  # no final count (yet): about four characters a token
            json = sum(len(j) for j in self.json.values())
            usage["output_tokens"] = -(-(len(self._text()) + json) // 4)
            usage["output_tokens_estimated"] = True
        message["usage"] = usage
        return message


def _parsed(raw: str, before: Any) -> Any:
    """A tool call's input: the JSON streamed for it, or (cut short) what it started with."""
    try:
        return orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return before if isinstance(before, dict) else {}


def usage_tokens(usage: dict) -> tuple[int, bool] | None:
    """Tokens a Messages answer used (input, cache and output), and whether estimated."""
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    if not _tokens(usage.get("output_tokens")) or not _tokens(usage.get("input_tokens")):
        return None
    total = usage["output_tokens"] + sum(usage[k] for k in keys if _tokens(usage.get(k)))
    return total, usage.get("output_tokens_estimated") is True
