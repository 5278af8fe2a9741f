"""Private conversations: bearer tokens, stored only as hashes and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TypedDict

from offloadd.domain.status import StatusDocument

TOKEN_QUERY = "token"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authorization(token: str) -> dict:
    """The create answer's `authorization` for a private request (shown once)."""
    return {
        "access": "private",
        "bearer_token": token,
        "stream_url_arg": f"{TOKEN_QUERY}={token}",
    }


class PrivateFields(TypedDict):
    _offloadd: dict[str, str]


def private_fields(token: str) -> PrivateFields:
    """What the status document keeps of the token: its hash, in offloadd's own section."""
    return {"_offloadd": {"token_sha256": token_hash(token)}}


def allows(doc: StatusDocument, token: str | None) -> bool:
    """Whether `token` opens this conversation; public ones need none."""
    if (doc.get("authorization") or {}).get("access") != "private":
        return True
    expected = (doc.get("_offloadd") or {}).get("token_sha256", "")
    return token is not None and hmac.compare_digest(token_hash(token), expected)


def any_allows(doc: StatusDocument, tokens: list[str]) -> bool:
    """Whether any of the tokens a reader sent opens this conversation."""
    return allows(doc, None) or any(allows(doc, token) for token in tokens)
