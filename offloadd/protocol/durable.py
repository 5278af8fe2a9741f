"""The Durable Streams protocol (durable-streams/durable-streams, PROTOCOL.md), sans I/O:
offsets, the cursor, the SSE framing of `live=sse`, JSON-mode storage, header names.

One owner of these rules for both kinds of stream offloadd serves by the protocol:
model answers (`/1/r/…`, `/2/r/…` with `?offset=`) and application streams
(`/v1/stream/<path>`). Offsets are `%016d_%016d`: a generation (always 0 here) and the
byte position in the stream's storage, so they sort lexicographically and the
conformance suite's hard-coded start (`0…0_0…0`) is position 0.
"""

from __future__ import annotations

import base64
import math
import random
import re
from dataclasses import dataclass

import orjson

# --- header names -----------------------------------------------------------------------

NEXT_OFFSET = "Stream-Next-Offset"
UP_TO_DATE = "Stream-Up-To-Date"
CLOSED = "Stream-Closed"
CURSOR = "Stream-Cursor"
TTL = "Stream-TTL"
EXPIRES_AT = "Stream-Expires-At"
SEQ = "Stream-Seq"
SSE_ENCODING = "Stream-SSE-Data-Encoding"
FORKED_FROM = "Stream-Forked-From"
FORK_OFFSET = "Stream-Fork-Offset"
FORK_SUB_OFFSET = "Stream-Fork-Sub-Offset"
PRODUCER_ID = "Producer-Id"
PRODUCER_EPOCH = "Producer-Epoch"
PRODUCER_SEQ = "Producer-Seq"
EXPECTED_SEQ = "Producer-Expected-Seq"
RECEIVED_SEQ = "Producer-Received-Seq"

# What a browser may send and read (CORS), and what every answer carries (§12.7).
REQUEST_HEADERS = (
    "Content-Type, Authorization, If-None-Match, Stream-Seq, Stream-TTL, Stream-Expires-At, "
    "Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, Stream-Forked-From, "
    "Stream-Fork-Offset, Stream-Fork-Sub-Offset, X-API-Key, Stream-Access"
)
RESPONSE_HEADERS = (
    "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Stream-TTL, "
    "Stream-Expires-At, Stream-SSE-Data-Encoding, Producer-Epoch, Producer-Seq, "
    "Producer-Expected-Seq, Producer-Received-Seq, ETag, Content-Type, Location, "
    "Stream-Read-Token"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
}

# --- offsets ----------------------------------------------------------------------------

START = "0000000000000000_0000000000000000"
NOW = -2  # `offset=now`: the tail, whatever it is when the read begins
MAX_POSITION = 10**16 - 1
_OFFSET = re.compile(r"(\d{16})_(\d{16})")


class BadOffset(ValueError):
    """An offset this server could not have handed out."""


def format_offset(position: int) -> str:
    """The offset of byte `position` (generation 0)."""
    return f"{0:016d}_{position:016d}"


def parse_offset(value: str) -> int:
    """The byte position an offset names: `-1` is the start, `now` is `NOW`."""
    if value == "-1":
        return 0
    if value == "now":
        return NOW
    m = _OFFSET.fullmatch(value)
    if m is None or int(m[1]) != 0:
        raise BadOffset("not an offset this server hands out")
    return int(m[2])


def query_offset(values: list[str]) -> int | None:
    """The `offset` of a query, which holds it at most once (None: not given)."""
    if not values:
        return None
    if len(values) > 1:
        raise BadOffset("`offset` given more than once")
    return parse_offset(values[0])


# --- the cursor (§10.1) -----------------------------------------------------------------

CURSOR_EPOCH_MS = 1728432000000  # 2024-10-09T00:00:00.000Z
CURSOR_INTERVAL_MS = 20_000
_LEADING_DIGITS = re.compile(r"\s*[+-]?\d+")


def cursor(now_ms: float, client: str | None, rng: random.Random | None = None) -> str:
    """The next cursor: the current 20-second interval, or — when the client already holds
    it or a later one — a strictly greater one with jitter, so a CDN never serves a client
    the same cached empty answer in a loop."""
    current = int((now_ms - CURSOR_EPOCH_MS) // CURSOR_INTERVAL_MS)
    m = _LEADING_DIGITS.match(client or "")  # as JavaScript's parseInt reads it
    if m is None or int(m[0]) < current:
        return str(current)
    jitter_s = (rng or random).randint(1, 3600)
    return str(int(m[0]) + max(1, math.ceil(jitter_s * 1000 / CURSOR_INTERVAL_MS)))


# --- content kinds ----------------------------------------------------------------------

TEXT, JSON, BINARY = "text", "json", "binary"


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def kind_of(content_type: str) -> str:
    """How a stream's bytes travel in SSE mode: text lines, JSON arrays, or base64."""
    media = media_type(content_type)
    if media == "application/json":
        return JSON
    return TEXT if media.startswith("text/") else BINARY


# --- JSON mode (§9.1) -------------------------------------------------------------------
# Stored as one compact JSON value per line (`\n` never occurs in compact JSON), so any
# byte range that ends on a line boundary is whole messages, and a read cut at the last
# line break never shows a torn message.


class BadJson(ValueError):
    """A body that is not JSON as JavaScript's JSON.parse reads it."""


def json_messages(body: bytes, allow_empty: bool) -> bytes:
    """A JSON body as stored lines; a top-level array is flattened one level."""
    try:
        value = orjson.loads(body)  # refuses NaN and Infinity, as JSON.parse does
    except orjson.JSONDecodeError:
        raise BadJson("the body is not valid JSON") from None
    items = value if isinstance(value, list) else [value]
    if not items and not allow_empty:
        raise BadJson("an empty JSON array appends nothing")
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def json_array(stored: bytes) -> bytes:
    """Stored lines as the one JSON array a read answers with."""
    return b"[" + b",".join(stored.splitlines()) + b"]"


def whole_lines(stored: bytes) -> bytes:
    """The part of a read that ends on a message boundary."""
    return stored[: stored.rfind(b"\n") + 1]


def count_messages(stored: bytes) -> int:
    return stored.count(b"\n")


def first_messages(stored: bytes, n: int) -> bytes:
    """The first `n` stored messages."""
    end = 0
    for _ in range(n):
        end = stored.index(b"\n", end) + 1
    return stored[:end]


# --- SSE mode (§5.8) --------------------------------------------------------------------

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def sse_data(payload: bytes, kind: str) -> bytes:
    """One `event: data` of a read: text as its lines, JSON as one array, other types
    in base64 (independently decodable)."""
    if kind == JSON:
        lines = [json_array(payload)]
    elif kind == BINARY:
        lines = [base64.b64encode(payload)]
    else:
        lines = _LINE_BREAK.split(payload)
    # SSE readers drop one space after `data:`: a line that starts with one keeps it
    body = b"".join(b"data: %s\n" % ln if ln[:1] == b" " else b"data:%s\n" % ln for ln in lines)
    return b"event: data\n" + body + b"\n"


@dataclass(frozen=True)
class Control:
    next_offset: str
    cursor: str | None = None
    up_to_date: bool = False
    closed: bool = False


def sse_control(control: Control) -> bytes:
    """One `event: control` (the JSON on one `data:` line, as the suite expects)."""
    body: dict = {"streamNextOffset": control.next_offset}
    if control.closed:
        body["streamClosed"] = True
    elif control.cursor is not None:
        body["streamCursor"] = control.cursor
    if control.up_to_date or control.closed:
        body["upToDate"] = True
    return b"event: control\ndata:" + orjson.dumps(body) + b"\n\n"


def etag(key: str, start: int, end: int, closed: bool) -> str:
    """The ETag of a read of [start, end): changes when data is added or the stream closes."""
    return f'"{key}:{start}:{end}{":c" if closed else ""}"'
