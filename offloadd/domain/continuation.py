"""Continuing a conversation: `from_status_url` names an earlier request of this server."""

from __future__ import annotations

from urllib.parse import urlsplit

from offloadd.domain.status import StatusDocument
from offloadd.errors import BadRequest
from offloadd.storage.layout import Location, parse_url


def earlier_location(url: str, own_base: str) -> Location:
    """The earlier request's location; only status URLs of this server are accepted."""
    try:
        parts, own = urlsplit(url), urlsplit(own_base)
        netloc, own_netloc = parts.netloc.lower(), own.netloc.lower()
    except ValueError:  # an unclosed `[`, say
        raise BadRequest("`from_status_url` is not a URL", code="invalid_from_status_url") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest("`from_status_url` must be a status URL", code="invalid_from_status_url")
    if netloc != own_netloc:
        raise BadRequest(
            f"`from_status_url` points at another server ({parts.netloc}); continue a "
            "conversation on the server that holds it",
            code="foreign_from_status_url",
        )
    found = parse_url(url)
    if not found or found[2] != ".json":
        raise BadRequest(
            "`from_status_url` is not a status URL of this server", code="invalid_from_status_url"
        )
    return found[1]


def answer_message(doc: StatusDocument) -> dict | None:
    """The earlier request's answer as an assistant message, if it produced one."""
    body = (doc.get("response") or {}).get("body") or {}
    if body.get("type") == "message":  # Anthropic's: its content blocks, as they came
        blocks = [b for b in body.get("content") or [] if isinstance(b, dict)]
        return {"role": "assistant", "content": blocks} if blocks else None
    choices = body.get("choices") or []
    if not choices:
        return None
    message = choices[0].get("message") or {}
    out = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    elif not out["content"]:
        return None
    return out


def continued_messages(earlier: StatusDocument, new: list) -> list:
    """Earlier messages, then the earlier answer, then the new messages."""
    messages = list((earlier.get("parameters") or {}).get("messages") or [])
    answer = answer_message(earlier)
    return messages + ([answer] if answer else []) + list(new)
