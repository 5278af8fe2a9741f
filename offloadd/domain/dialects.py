"""The dialects offloadd speaks upstream (their wire formats: `protocol/wire.py`), each
bound to the assembly that adds its events up to the status document's body, and which
one an endpoint of ours uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offloadd.domain.assemble import Completion
from offloadd.protocol.wire import Assembly, Dialect

RESPONSES_ENDPOINT = "/v1/responses"
MESSAGES_ENDPOINT = "/v1/messages"


def _responses_assembly() -> Assembly:
    from offloadd.domain.responses import ResponseAssembly

    return ResponseAssembly()


def _messages_assembly() -> Assembly:
    from offloadd.domain.messages import MessageAssembly

    return MessageAssembly()


CHAT = Dialect("chat", "/chat/completions", Completion, names_events=False)
RESPONSES = Dialect("responses", "/responses", _responses_assembly, names_events=True)
# under Anthropic's base URL (`--anthropic-url`, which has no `/v1`)
MESSAGES = Dialect(
    "messages",
    "/v1/messages",
    _messages_assembly,
    names_events=True,
    terminal=("message_stop",),
    upstream="anthropic",
)
BY_ENDPOINT = {RESPONSES_ENDPOINT: RESPONSES, MESSAGES_ENDPOINT: MESSAGES}


def for_endpoint(endpoint: str | None) -> Dialect:
    return BY_ENDPOINT.get(endpoint or "", CHAT)


def dialect_of(doc: Mapping[str, Any]) -> Dialect:
    """The dialect of the request a status document describes."""
    return for_endpoint((doc.get("request") or {}).get("endpoint"))
