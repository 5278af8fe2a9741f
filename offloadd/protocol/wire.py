"""The two upstream APIs offloadd speaks, and what differs between them on the wire: the
upstream path, how events are named in the transcript, when the upstream's stream is over,
what counts as a failure inside it, and the kind of object its events add up to.

Chat Completions streams unnamed chunks and ends with `[DONE]`; the Responses API streams
typed events (`event: response.output_text.delta`, each with its `sequence_number`) and
ends with a terminal event (`response.completed`, `.failed`, `.incomplete`).

Sans I/O, below both the upstream reader and the transcript; the two dialects themselves,
bound to the assemblies that fold their events, are `domain/dialects.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

TERMINAL_EVENTS = ("response.completed", "response.failed", "response.incomplete")


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

    def event_name(self, chunk: dict) -> str | None:
        kind = chunk.get("type")
        return kind if self.names_events and isinstance(kind, str) and kind.isprintable() else None

    def is_terminal(self, chunk: dict) -> bool:
        return self.names_events and chunk.get("type") in TERMINAL_EVENTS

    def failure(self, chunk: dict) -> tuple[str, str] | None:
        """(code, message) when this event says the upstream call failed."""
        if not self.names_events:
            return None
        if chunk.get("type") == "error":
            return str(chunk.get("code") or "upstream_error"), str(chunk.get("message") or "")
        if chunk.get("type") == "response.failed":
            response = chunk.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            error = error if isinstance(error, dict) else {}
            return str(error.get("code") or "upstream_error"), str(error.get("message") or "")
        return None
