"""The two dialects offloadd speaks upstream (their wire formats: `protocol/wire.py`), each
bound to the assembly that adds its events up to the status document's body, and which
one an endpoint of ours uses.
"""

from __future__ import annotations

from offloadd.domain.assemble import Completion
from offloadd.protocol.wire import Assembly, Dialect

RESPONSES_ENDPOINT = "/v1/responses"


def _responses_assembly() -> Assembly:
    from offloadd.domain.responses import ResponseAssembly

    return ResponseAssembly()


CHAT = Dialect("chat", "/chat/completions", Completion, names_events=False)
RESPONSES = Dialect("responses", "/responses", _responses_assembly, names_events=True)


def for_endpoint(endpoint: str | None) -> Dialect:
    return RESPONSES if endpoint == RESPONSES_ENDPOINT else CHAT
