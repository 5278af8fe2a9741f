"""The upstream APIs offloadd speaks, and what differs between them on the wire: the
upstream (OpenAI's base URL or Anthropic's) and path, how events are named in the
transcript, when the upstream's stream is over, what counts as a failure inside it, how
offloadd's own ending of a failed stream reads, and the kind of object its events add up to.

Chat Completions streams unnamed chunks and ends with `[DONE]`; the Responses API streams
typed events (`event: response.output_text.delta`, each with its `sequence_number`) and
ends with a terminal event (`response.completed`, `.failed`, `.incomplete`); Anthropic's
Messages API streams named events (`event: message_start`, `content_block_delta`, …) and
ends with `message_stop`, or a named `event: error` — which its SDKs raise, while they skip
an unnamed event: so offloadd's own endings of a Messages stream are a named `error` too.

Sans I/O, below both the upstream reader and the transcript; the two dialects themselves,
bound to the assemblies that fold their events, are `domain/dialects.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

TERMINAL_EVENTS = ("response.completed", "response.failed", "response.incomplete")
# Anthropic's error types (its `error.type`) for an HTTP status, and for offloadd's codes
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OWN_TYPES = {"upstream_timeout": "timeout_error", "stopped": "api_error"}


def anthropic_error(
    code: str, message: str, status: int | None = None, kind: str | None = None
) -> dict:
    """An error as Anthropic's API shapes it: its `type` (the upstream's own `kind`, or the
    one for the HTTP status or offloadd's code), the message, and offloadd's code in
    `details.error_code` (the one key there: the SDK appends others to its message)."""
    kind = kind or OWN_TYPES.get(code) or ANTHROPIC_TYPES.get(status or 0)
    if kind is None:
        kind = "invalid_request_error" if status and status < 500 else "api_error"
    error: dict = {"type": kind, "message": message}
    if code:
        error["details"] = {"error_code": code}
    return {"type": "error", "error": error}


class Assembly(Protocol):
    """Folds a stream's events into the object a poller reads."""

    def add(self, chunk: dict) -> None: ...
    def body(self) -> dict: ...
    def empty(self) -> bool: ...


@dataclass(frozen=True)
class Dialect:
    name: str
    path: str  # under the upstream's base URL
    assembly: Callable[[], Assembly]
    names_events: bool  # transcript events carry `event: <type>`
    terminal: tuple[str, ...] = TERMINAL_EVENTS  # events after which nothing comes
    upstream: str = "openai"  # whose base URL and headers: "openai" or "anthropic"

    @property
    def end(self) -> str:
        """What ends a whole stream of this dialect, as a message names it."""
        return "`message_stop`" if self.upstream == "anthropic" else "`[DONE]`"

    def ending(self, status: str, error: dict) -> tuple[str | None, dict]:
        """(name, body) of offloadd's event that says why a stream ended without its
        end: Anthropic's named `error`, or the unnamed `{"status", "error"}` otherwise."""
        if self.upstream != "anthropic":
            return None, {"status": status, "error": error}
        kind = error.get("upstream_type")
        code = str(error.get("code") or "")
        code = "" if code == "upstream_error" else code  # the upstream's own error event
        status_code = error.get("upstream_status")
        message = str(error.get("message") or "")
        kind = kind if isinstance(kind, str) else None
        return "error", anthropic_error(code, message, status_code, kind)

    def event_name(self, chunk: dict) -> str | None:
        kind = chunk.get("type")
        return kind if self.names_events and isinstance(kind, str) and kind.isprintable() else None

    def is_terminal(self, chunk: dict) -> bool:
        return self.names_events and chunk.get("type") in self.terminal

    def failure(self, chunk: dict) -> tuple[str, str] | None:
        """(code, message) when this event says the upstream call failed."""
        if not self.names_events:
            return None
        if chunk.get("type") == "error":
            nested = chunk.get("error")  # Anthropic's `{"type": "error", "error": {…}}`
            if isinstance(nested, dict):
                return str(nested.get("type") or "upstream_error"), str(nested.get("message"))
            return str(chunk.get("code") or "upstream_error"), str(chunk.get("message") or "")
        if chunk.get("type") == "response.failed":
            response = chunk.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            error = error if isinstance(error, dict) else {}
            return str(error.get("code") or "upstream_error"), str(error.get("message") or "")
        return None
